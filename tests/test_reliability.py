"""Reliability catalogue (docs/RELIABILITY.md): non-finite steps, bad clips, preemption and
unreadable checkpoints, config and checkpoint errors, long audio, CSV and audio edge cases.

Audio loading errors already covered in tests/test_audio_io.py and teacher-logit errors in
tests/test_distill.py are referenced from the catalogue, not repeated here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax import cli
from fast_ast_jax.audio import AudioError, load_audio
from fast_ast_jax.audio.features import features
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import FolderSource
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.models.ast import create_ast
from fast_ast_jax.inference import predict, predict_windows
from fast_ast_jax.train import loop
from fast_ast_jax.checkpoints.store import CheckpointError, CheckpointMismatchError
from fast_ast_jax.train.config import default_config
from fast_ast_jax.checkpoints import load as load_checkpoint
from fast_ast_jax.train.evaluation import evaluate_checkpoint
from fast_ast_jax.train.state import TrainState, make_optimizer
from fast_ast_jax.train.step import train_step
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.validate import validate
from fast_ast_jax.windows import Scorer, window_starts, windowed_scores
from tests.helpers import (bad_folder, config, constant_lr, load_config, sigint_at_batch,
                           write_folder)

ROOT = Path(__file__).resolve().parents[1]
FE = FrontEnd(num_mel_bins=32, target_frames=48)


def jsonl(workdir: Path) -> list[dict]:
    return [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-step workdir of configs/test.py (checkpoints at 1 and 2)."""
    work = tmp_path_factory.mktemp("trained") / "w"
    loop.train_and_evaluate(config(num_steps=2, checkpoint_every=1), str(work))
    return work


# --- 1. non-finite loss / gradient ------------------------------------------------------------

def _tiny_state():
    model = create_ast("tiny", num_classes=3, width=32, depth=1, num_heads=2, mlp_dim=64,
                       num_mel_bins=32, frames=48, fstride=16, tstride=16)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 48, 32)))["params"]
    opt = default_config().optim
    tx = make_optimizer(opt, lambda s: 1e-2)
    state = TrainState(params=params, opt_state=tx.init(params), step=jnp.int32(0),
                       rng=jax.random.PRNGKey(1))
    return model, tx, state


@pytest.mark.slow
def test_nonfinite_step_keeps_params_and_counts():
    model, tx, state = _tiny_state()
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, loss="softmax",
                                           lr_fn=lambda n: 1e-2))
    x = np.random.default_rng(0).normal(size=(2, 48, 32)).astype(np.float32)
    batch = {"x": x, "y": np.eye(3, dtype=np.float32)[[0, 1]], "mask": np.ones(2, np.float32)}
    for bad in (np.nan, np.inf):
        poisoned = dict(batch, x=np.where(np.arange(48)[None, :, None] == 5, bad, x))
        new, m = step(state, poisoned)
        assert float(m["skipped_nonfinite"]) == 1.0 and not np.isfinite(float(m["loss"]))
        chex.assert_trees_all_equal(new.params, state.params)
        chex.assert_trees_all_equal(new.opt_state, state.opt_state)
        assert int(new.step) == 1  # the step (and its batch) is consumed
    new, m = step(state, batch)
    assert float(m["skipped_nonfinite"]) == 0.0
    assert not np.allclose(new.params["head"]["kernel"], state.params["head"]["kernel"])


def _poison(monkeypatch, steps: set[int]):
    """NaN features in the batches of the given 1-based steps (4 steps per epoch)."""
    original = Pipeline.batch

    def batch(self, epoch, index):
        out = original(self, epoch, index)
        if self.train and epoch * self.steps_per_epoch + index + 1 in steps:
            out["x"] = np.full_like(out["x"], np.nan)
        return out

    monkeypatch.setattr(Pipeline, "batch", batch)


@pytest.mark.slow
def test_nonfinite_batches_are_skipped_counted_then_stop(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    final = loop.train_and_evaluate(config(num_steps=3, checkpoint_every=0), str(tmp_path / "a"))
    logged = jsonl(tmp_path / "a")
    assert [r["train/skipped_nonfinite"] for r in logged] == [0.0, 1.0, 0.0]
    assert final["step"] == 3 and all(np.isfinite(r["train/loss"]) for r in logged[::2])
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(final["state"].params))

    # 3 NaN steps in a row (4, 5, 6) stop the run; checkpoints 2 and 4 are left (step 4's
    # params are step 3's: the update was skipped).
    _poison(monkeypatch, {4, 5, 6})
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps \(up to step 6\).*"
                                                 r"last good checkpoint is step 4"):
        loop.train_and_evaluate(config(num_steps=8, checkpoint_every=2,
                                       max_consecutive_nonfinite=3), str(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["2", "4"]


# --- 2. bad clips -----------------------------------------------------------------------------

def test_bad_clips_are_skipped_deterministically(tmp_path):
    meta, bad = bad_folder(tmp_path)
    src = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")

    def pipe(train, **kw):
        return Pipeline(src, frontend=FE, batch_size=4, train=train, seed=3, process_index=0,
                        process_count=1, **kw)

    cached, lazy = pipe(True), pipe(True, cache=False)
    assert sorted(cached.bad_clips) == sorted(bad)
    assert all(bad[i] in msg for i, msg in cached.bad_clips.items())
    for e, i in [(0, 0), (0, 2), (1, 1)]:  # same batches with or without the cache
        a, b = cached.batch(e, i), lazy.batch(e, i)
        np.testing.assert_array_equal(a["x"], b["x"])
        assert a["mask"].all()  # training batches stay full
    # A bad clip is replaced by the next good one in source order.
    assert [cached.good_example(i)[0] for i in (0, 1, 4, 6, 9)] == [0, 2, 5, 7, 10]
    ev = pipe(False)
    masks = np.concatenate([ev.batch(0, i)["mask"] for i in range(ev.steps_per_epoch)])
    assert [i for i in range(len(src)) if not masks[i]] == sorted(bad)
    # The feature cache file keeps the bad-clip report.
    pipe(True, cache_dir=tmp_path / "cache")
    again = pipe(True, cache_dir=tmp_path / "cache")
    assert again.bad_clips == cached.bad_clips


def test_bad_clip_fail_mode_names_the_file(tmp_path):
    meta, _ = bad_folder(tmp_path)
    src = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")
    kw = dict(frontend=FE, batch_size=4, train=True, process_index=0, process_count=1,
              on_bad_clip="fail")
    with pytest.raises(AudioError, match=r"1\.wav: file is empty.*on_bad_clip='skip'"):
        Pipeline(src, **kw)  # found while featurising up front, before any step
    lazy = Pipeline(src, cache=False, **kw)
    with pytest.raises(AudioError, match=r"\.wav"):
        for e in range(3):
            for i in range(lazy.steps_per_epoch):
                lazy.batch(e, i)
    with pytest.raises(ValueError, match="on_bad_clip='drop'"):
        Pipeline(src, frontend=FE, batch_size=4, train=True, on_bad_clip="drop")


@pytest.mark.slow
def test_training_reports_bad_clips(tmp_path):
    meta, bad = bad_folder(tmp_path / "data", n=16)
    c = config(num_steps=2, batch_size=4)
    c.data.source = "folder"
    c.data.train = {"csv_path": str(meta), "audio_dir": str(meta.parent / "audio")}
    c.data.eval = {"csv_path": str(meta), "audio_dir": str(meta.parent / "audio")}
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    logged = jsonl(tmp_path / "w")
    assert logged[0]["train/bad_clips"] == len(bad)
    assert final["eval_bad_clips"] == len(bad) and final["eval_num_clips"] == 16 - len(bad)


@pytest.mark.slow
def test_data_error_mid_run_keeps_progress(tmp_path, monkeypatch):
    original = Pipeline.batch

    def failing(self, epoch, index):
        if epoch * self.steps_per_epoch + index == 3:
            raise AudioError("clip_x.wav: cannot decode audio")
        return original(self, epoch, index)

    monkeypatch.setattr(Pipeline, "batch", failing)
    with pytest.raises(AudioError, match="clip_x"):
        loop.train_and_evaluate(config(num_steps=8, checkpoint_every=100), str(tmp_path))
    # checkpoint_every=100, yet the 3 finished steps are saved
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["3"]
    monkeypatch.setattr(Pipeline, "batch", original)
    assert loop.train_and_evaluate(config(num_steps=4), str(tmp_path))["step"] == 4


# --- 3. preemption and unreadable checkpoints -------------------------------------------------

@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back(tmp_path, capfd):
    straight = loop.train_and_evaluate(config(num_steps=4, checkpoint_every=2),
                                       str(tmp_path / "b"))
    ckpts = tmp_path / "b" / "checkpoints"
    (ckpts / "4" / "state" / "manifest.ocdbt").unlink()  # corrupt the newest step
    shutil.rmtree(ckpts / "4" / "state" / "d")
    # An orbax temporary dir (a save killed half-way) is never a step.
    half = ckpts / "6.orbax-checkpoint-tmp-1234567"
    shutil.copytree(ckpts / "2", half)
    capfd.readouterr()
    resumed = loop.train_and_evaluate(config(num_steps=4, checkpoint_every=2),
                                      str(tmp_path / "b"))
    err = capfd.readouterr().err
    assert f"checkpoint {ckpts / '4'} is unreadable" in err and "falling back to step 2" in err
    assert (ckpts / "4.unreadable").is_dir() and (ckpts / "4").is_dir()  # re-saved
    # Resumed from step 2: same params as the uninterrupted run, bit for bit.
    chex.assert_trees_all_equal(resumed["state"].params, straight["state"].params)
    # Every step unreadable: a clear error, naming the directory.
    for step in ("2", "4"):
        shutil.rmtree(ckpts / step / "state")
    with pytest.raises(CheckpointError, match=r"checkpoints/2 is unreadable"):
        load_checkpoint(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


KILL = """
import sys
sys.path.insert(0, sys.argv[1])
from absl import logging
logging.set_verbosity(logging.WARNING)
import jax
jax.config.update("jax_disable_most_optimizations", True)
from fast_ast_jax.train import loop
from tests.helpers import constant_lr
loop.train_and_evaluate(constant_lr(1000, checkpoint_every=2), sys.argv[2])
"""


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    """kill -9 mid-run: the next run resumes from the last complete checkpoint and ends
    with the same params as an uninterrupted run, bit for bit."""
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-c", KILL, str(ROOT), str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 120
    while not (work / "checkpoints" / "6").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no handler runs, possibly mid-save
    proc.communicate(timeout=60)
    saved = max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    target = saved + 2
    resumed = loop.train_and_evaluate(constant_lr(target, checkpoint_every=2), str(work))
    straight = loop.train_and_evaluate(constant_lr(target, checkpoint_every=2),
                                       str(tmp_path / "straight"))
    assert resumed["step"] == target
    chex.assert_trees_all_equal(resumed["state"].params, straight["state"].params)


@pytest.mark.slow
def test_ctrl_c_saves_and_stops(tmp_path, monkeypatch):
    """SIGINT (Ctrl-C) is handled like SIGTERM: finish the step, save it, stop cleanly."""
    handler = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN under `cmd &`
    sigint_at_batch(monkeypatch, Pipeline, 2)
    stopped = loop.train_and_evaluate(config(num_steps=8, checkpoint_every=100), str(tmp_path))
    assert stopped["step"] == 3
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["3"]
    assert signal.getsignal(signal.SIGINT) is handler  # restored


# --- 4. config and checkpoint errors ----------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [
    ("optim.lr", -1e-3, r"config\.optim\.lr=-0\.001: a learning rate must be >= 0"),
    ("batch_size", 0, r"config\.batch_size=0: must be > 0"),
    ("model.prune_keep_rate", 0.0, r"config\.model\.prune_keep_rate=0\.0: .*\(0, 1\]"),
    ("model.prune_keep_rate", 1.5, r"config\.model\.prune_keep_rate=1\.5"),
    ("model.dropout", 1.0, r"config\.model\.dropout=1\.0: must lie in \[0, 1\)"),
    ("model.num_heads", 3, r"config\.model\.width=64 is not divisible by num_heads=3"),
    ("model.size", "huge", r"config\.model\.size='huge'"),
    ("optim.schedule", "linear", r"config\.optim\.schedule='linear': use one of"),
    ("data.on_bad_clip", "ignore", r"config\.data\.on_bad_clip='ignore'"),
    ("data.source", "hf", r"config\.data\.source='hf': use one of \('synthetic', 'folder', "
     r"'tfds'\)$"),
    ("data.worker_count", -1, r"config\.data\.worker_count=-1: must be >= 0"),
    ("loss", "mse", r"config\.loss='mse'"),
    ("keep_checkpoints", 0, r"config\.keep_checkpoints=0"),
    ("max_consecutive_nonfinite", 0, r"config\.max_consecutive_nonfinite=0"),
    ("frontend.target_frames", 8, r"config\.model\.patch_size=\(16, 16\): a patch of 16 "
     r"frames is longer than the input's frontend\.target_frames=8"),
])
def test_impossible_config_values(field, value, match):
    c = load_config("test")
    *parents, name = field.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[name] = value
    with pytest.raises(ValueError, match=match) as info:
        validate(read_config(c), device_count=1)
    assert "\n" not in str(info.value)


def test_tome_r_larger_than_the_tokens_warns():
    """ToMe clamps r per block (as the reference), so a too-large r is legal: a warning."""
    c = load_config("test")
    c.model.update(depth=2, tome_r=50)  # the last (here: only) block would never merge
    with pytest.warns(UserWarning, match=r"config\.model\.tome_r=50: the first block can "
                                         r"merge at most 3 of its 6 patch tokens"):
        validate(read_config(c), device_count=1)


def test_config_checks_build_no_model(monkeypatch):
    """The config checks read the fields (models.ast.token_plan is a function of them):
    validating a padded and a packed config with ToMe and TopK makes no Flax module."""
    from fast_ast_jax.models import ast

    def built(self):
        raise AssertionError(f"{type(self).__name__} built while validating a config")

    monkeypatch.setattr(ast.Encoder, "__post_init__", built)
    for name in ("test", "test_elastic"):
        c = load_config(name)
        c.model.update(tome_r=1, prune_keep_rate=0.5, prune_layers=(0,))
        validate(read_config(c), device_count=1)
    with pytest.raises(AssertionError, match="AST built"):
        ast.create_ast("tiny")


def test_batch_not_divisible_by_devices_and_locked_config():
    c = load_config("test")
    validate(read_config(c), device_count=8)
    c.batch_size = 12
    with pytest.raises(ValueError, match=r"config\.batch_size=12: must be a multiple of the 8"):
        validate(read_config(c), device_count=8)
    c.lock()
    with pytest.raises(AttributeError, match="batch_szie"):
        c.batch_szie = 8
    with pytest.raises(AttributeError, match="nmu"):
        c.data.train.nmu = 8
    with pytest.raises(TypeError, match="'batch_size'.*cannot be casted"):
        c.batch_size = "abc"


@pytest.mark.slow
def test_train_py_rejects_bad_flags(tmp_path):
    def run(*flags, recipe="test.py"):
        return subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                               str(ROOT / "configs" / recipe), "--workdir",
                               str(tmp_path), *flags], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    def one_line(proc, expected: str):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith("error: ") and expected in lines[0], lines

    one_line(run("--config.batch_szie=8"), 'did you mean "batch_size"')
    one_line(run("--config.batch_size=abc"), "flag --config.batch_size=abc")
    one_line(run("--config.data.auto_stats=auto"), "flag --config.data.auto_stats=auto")
    one_line(run("--config.frontend.mean=auto"), "set --config.data.auto_stats=True")
    one_line(run("--config.optim.lr=-1"), "config.optim.lr=-1.0: a learning rate")
    one_line(run("--config.batch_size=-3"), "config.batch_size=-3: must be > 0")
    # an incompatible option found while building the run, not by the validator
    one_line(run("--config.frontend.on_device=True", recipe="test_elastic.py"),
             "on_device=True is not supported by packed")
    debug = run("--config.batch_size=-3", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing started


def test_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """pathlib would turn gs://b/x into a local gs:/b/x directory: a bucket must be mounted."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--workdir gs://bucket/run: a URL .*\(gcsfuse"):
        loop.train_and_evaluate(default_config(), "gs://bucket/run")
    assert not list(tmp_path.iterdir())


def test_library_value_errors_keep_their_traceback():
    """Only this project's deliberate checks become one-line usage errors: a ValueError
    raised inside a library is a bug and propagates."""
    c = default_config()
    c.batch_size = -3
    with pytest.raises(SystemExit) as exit_info:
        with cli.user_errors():
            validate(read_config(c), device_count=1)
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="batch_size=-3"):
        with cli.user_errors(debug=True):
            validate(read_config(c), device_count=1)
    with pytest.raises(ValueError, match="cannot reshape"):
        with cli.user_errors():
            np.zeros(3).reshape(2, 2)
    with pytest.raises(ValueError, match="raised by a test"):  # not the project's code
        with cli.user_errors():
            raise ValueError("raised by a test")


@pytest.mark.slow
def test_checkpoint_of_another_size(trained, tmp_path):
    c = config(num_steps=3)
    c.model.width = 32
    with pytest.raises(ValueError, match=r"cannot resume.*width: checkpoint 64 vs config 32"):
        loop.train_and_evaluate(c, str(shutil.copytree(trained, tmp_path / "copy")))
    c = config(num_steps=1, init_from=str(trained))
    c.model.mlp_dim = 128
    with pytest.raises(CheckpointMismatchError,
                       match=r"init_from .*: block_0/mlp/fc1/bias has shape \(256,\) "
                             r"but the model needs \(128,\)"):
        loop.train_and_evaluate(c, str(tmp_path / "w"))
    deep = config(num_steps=1)
    deep.model.depth = 2
    loop.train_and_evaluate(deep, str(tmp_path / "deep"))
    c = config(num_steps=1, init_from=str(tmp_path / "deep"))  # 1 block: not a silent
    with pytest.raises(CheckpointMismatchError,  # partial load of the 2-block checkpoint
                       match=r"init_from .* has \d+ parameter\(s\) the model lacks, e\.g\. "
                             r"block_1/"):
        loop.train_and_evaluate(c, str(tmp_path / "w"))
    # Same size, other labels: encoder from the checkpoint, a fresh head.
    c = config(num_steps=1, init_from=str(trained))
    c.optim.lr = 0.0
    c.data.source = "folder"
    meta = write_folder(tmp_path / "d", [(f"{i}.wav", "xy"[i % 2], "1") for i in range(8)])
    c.data.train = {"csv_path": str(meta), "audio_dir": str(meta.parent / "audio")}
    final = loop.train_and_evaluate(c, str(tmp_path / "w2"))
    loaded = load_checkpoint(trained).params
    chex.assert_trees_all_close(final["state"].params["block_0"], loaded["block_0"])
    assert final["state"].params["head"]["kernel"].shape[-1] == 2


# --- 6. long audio ----------------------------------------------------------------------------

def test_window_plan():
    fe = FrontEnd(num_mel_bins=32, target_frames=100)  # 10 ms hop, 25 ms window
    one_s = fe.window_size + 99 * fe.hop_size  # exactly 100 frames
    assert window_starts(one_s, frontend=fe, hop_frames=50) == [0]
    assert window_starts(one_s + fe.hop_size, frontend=fe, hop_frames=50) == [0, 50]
    assert window_starts(10, frontend=fe, hop_frames=50) == [0]  # shorter than one frame
    hour = 3600 * fe.sample_rate
    starts = window_starts(hour, frontend=fe, hop_frames=50)
    assert len(starts) == 7199 and starts[-1] + 100 >= 359998  # covers the last frame
    with pytest.raises(ValueError, match="hop_frames=0"):
        window_starts(hour, frontend=fe, hop_frames=0)


def test_windowed_scores_batch_and_aggregate():
    rng = np.random.default_rng(0)
    waves = [rng.normal(size=n).astype(np.float32) * 0.1
             for n in (3000, 16000 * 20, 8000, 16000 * 3)]
    calls = []

    def apply(x, frames=None):  # a fake 3-class model: class scores from mean features
        calls.append(x.shape)
        return np.stack([x.mean((1, 2)), x[:, :10].mean((1, 2)), -x.mean((1, 2))], -1)

    for multi in (False, True):
        calls.clear()
        out = list(windowed_scores(iter(waves), scorer=Scorer(
            apply=apply, frontend=FE, multi_label=multi, batch_size=16)))
        assert len(out) == 4 and set(calls) == {(16, 48, 32)}  # fixed-size batches
        for wave, clip in zip(waves, out):
            starts = window_starts(len(wave), frontend=FE, hop_frames=24)
            assert len(clip.windows) == len(starts)
            x = np.stack([features(wave[s * FE.hop_size:], frontend=FE) for s in starts])
            z = apply(x)
            if multi:
                expected = (1 / (1 + np.exp(-z))).max(0)
            else:
                expected = np.exp(z.mean(0)) / np.exp(z.mean(0)).sum()
            np.testing.assert_allclose(clip.scores, expected, rtol=1e-5)
            times = [(t0, t1) for t0, t1, _ in clip.windows]
            assert times[0][0] == 0.0 and times[-1][1] == pytest.approx(len(wave) / 16000)
            assert all(b[0] == pytest.approx(a[0] + 0.24) for a, b in zip(times, times[1:]))
    assert sum(s[0] for s in calls) >= 20 * 100 // 24  # the 20 s clip alone: ~80 windows


@pytest.mark.slow
def test_predict_and_evaluate_long_audio(trained, tmp_path, capsys):
    sr = 22050
    t = np.arange(int(sr * 3.0)) / sr  # 3 s, the model was trained on 0.48 s
    sf.write(tmp_path / "long.wav", 0.3 * np.sin(2 * np.pi * 440 * t), sr)
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(2 * np.pi * 440 * t[:4000]), sr)
    files = [str(tmp_path / "long.wav"), str(tmp_path / "short.wav")]
    agg, windows = zip(*predict_windows(files, checkpoint=trained, top_k=8, batch_size=4))
    assert len(windows[0]) == len(window_starts(3 * 16000, frontend=FrontEnd(
        num_mel_bins=32, target_frames=48), hop_frames=24)) and len(windows[1]) == 1
    assert sum(s for _, s in agg[0]) == pytest.approx(1.0, abs=1e-5)
    # A short clip is one window: the cropped/padded training input.
    restored = load_checkpoint(trained)
    x = features(load_audio(files[1], sample_rate=16000), frontend=restored.frontend)
    logits = restored.model.apply({"params": restored.params}, x[None], train=False)[0]
    probs = np.asarray(jax.nn.softmax(logits))
    assert dict(agg[1]) == pytest.approx({restored.labels[i]: float(probs[i])
                                          for i in range(8)}, rel=1e-4)
    assert predict(files, checkpoint=trained, top_k=2, batch_size=4) == [list(a[:2]) for a in agg]
    from fast_ast_jax.predict import main

    main([*files, "--checkpoint", str(trained), "--per_window", "--top_k", "1"])
    out = capsys.readouterr().out
    assert "0.00-    0.49 s:" in out and out.count(" s: ") == len(windows[0]) + 1
    # evaluate.py --hop_frames: whole long synthetic clips, windows aggregated.
    data = config()
    data.data.eval = {"num_examples": 6, "split": "eval", "min_seconds": 1.0,
                      "max_seconds": 2.0}
    rows = evaluate_checkpoint(trained, config=data, hop_frames=24, echo=None)
    assert rows[0]["num_clips"] == 6
    assert rows[0]["accuracy"] * 6 == pytest.approx(round(rows[0]["accuracy"] * 6))


# --- 7. CSV and audio edge cases not covered in test_data / test_audio_io ---------------------

def test_csv_duplicates_and_paths_outside_the_data_root(tmp_path):
    meta = write_folder(tmp_path, [("a.wav", "x", "1"), ("b.wav", "y", "1"), ("a.wav", "y", "2")])
    with pytest.raises(ValueError, match=r"line 4: 'a\.wav' is listed again \(first on line 2\)"):
        FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")
    assert len(FolderSource(csv_path=meta, audio_dir=tmp_path / "audio",
                            select={"fold": "1"})) == 2  # only selected rows
    (tmp_path / "outside.wav").write_bytes((tmp_path / "audio" / "a.wav").read_bytes())
    for name in ("../outside.wav", str(tmp_path / "outside.wav")):
        meta.write_text(f"filename,label\na.wav,x\n{name},y\n")
        with pytest.raises(ValueError, match=r"line 3: .* is not inside the audio directory"):
            FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")
    meta.write_text("filename,label\n./a.wav,x\n")  # stays inside: fine
    assert len(FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")) == 1
    meta.write_text("file,label\na.wav,x\n")
    with pytest.raises(ValueError, match=r"no column 'filename'; the header has \['file'"):
        FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")


def test_truncated_and_corrupt_compressed_files(tmp_path):
    x = (0.5 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    wav = (tmp_path / "a.wav").read_bytes()
    # A wav cut mid-data keeps the samples that are there (libsndfile reads up to EOF).
    (tmp_path / "cut.wav").write_bytes(wav[:len(wav) // 2])
    cut = load_audio(tmp_path / "cut.wav", sample_rate=16000)
    assert 0 < len(cut) < 16000
    np.testing.assert_allclose(cut, x[:len(cut)], atol=2 ** -15)
    for fmt in ("FLAC", "MP3"):
        if fmt not in sf.available_formats():
            continue
        path = tmp_path / f"a.{fmt.lower()}"
        sf.write(path, x, 16000, format=fmt)
        data = path.read_bytes()
        (tmp_path / f"cut.{fmt.lower()}").write_bytes(data[:len(data) // 3])
        with pytest.raises(AudioError, match=r"cut\.\w+: cannot decode audio"):
            load_audio(tmp_path / f"cut.{fmt.lower()}", sample_rate=16000)
    (tmp_path / "junk.mp3").write_bytes(bytes(np.random.default_rng(1).integers(
        0, 256, 3000, np.uint8)))
    with pytest.raises(AudioError, match=r"junk\.mp3: cannot decode audio"):
        load_audio(tmp_path / "junk.mp3", sample_rate=16000)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_32", "FLOAT"])
def test_96khz_multichannel(tmp_path, subtype):
    sr, t = 96000, np.arange(96000) / 96000
    tone = 0.4 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "hi.wav", np.stack([tone] * 6, 1), sr, subtype=subtype)
    wave = load_audio(tmp_path / "hi.wav", sample_rate=16000)
    assert wave.shape == (16000,) and wave.dtype == np.float32
    spec = np.abs(np.fft.rfft(wave * np.hanning(16000)))
    assert abs(np.argmax(spec) - 1000) <= 1
