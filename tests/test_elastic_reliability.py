"""The packed (ElasticAST) run has the padded run's failure handling (loop.run_steps):
non-finite steps skipped then fatal, bad clips skipped or fatal, Ctrl-C / SIGTERM saves,
unreadable checkpoints fall back, interrupted + resumed == uninterrupted, config checks."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError
from fast_ast_jax.data import FolderSource
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.train import loop
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.validate import validate
from tests.helpers import bad_folder, load_config, sigint_at_batch


def config(num_steps: int, **top):
    """configs/test_elastic.py (2 blocks, 24 synthetic clips), constant lr, no eval."""
    c = load_config("test_elastic")
    c.data.eval = {}
    c.optim.schedule = "constant"
    c.update(num_steps=num_steps, log_every=1, **top)
    return c


def jsonl(workdir: Path) -> list[dict]:
    return [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]


def steps_saved(workdir: Path) -> list[str]:
    return sorted((p.name for p in (workdir / "checkpoints").iterdir()), key=str)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    original = PackedPipeline.batch
    poisoned = {2}

    def batch(self, epoch, index):
        out = original(self, epoch, index)
        if self.train and epoch * self.steps(0) + index + 1 in poisoned:
            out["patches"] = np.full_like(out["patches"], np.nan)
        return out

    monkeypatch.setattr(PackedPipeline, "batch", batch)
    final = loop.train_and_evaluate(config(3, checkpoint_every=0), str(tmp_path / "a"))
    logged = jsonl(tmp_path / "a")
    assert [r["train/skipped_nonfinite"] for r in logged] == [0.0, 1.0, 0.0]
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(final["state"].params))
    assert all(r["train/clips_per_s"] > 0 for r in logged)

    poisoned.clear()
    poisoned.update({4, 5, 6})
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps \(up to step 6\).*"
                                                 r"last good checkpoint is step 4"):
        loop.train_and_evaluate(config(8, checkpoint_every=2, max_consecutive_nonfinite=3),
                              str(tmp_path / "b"))
    assert steps_saved(tmp_path / "b") == ["2", "4"]


def test_bad_clips_skipped_from_the_plan_or_fatal(tmp_path):
    meta, bad = bad_folder(tmp_path, n=12)
    src = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")
    fe = FrontEnd(num_mel_bins=32, target_frames=64)
    spec = PackSpec(rows=2, max_tokens=40, max_slots=8)
    pipe = PackedPipeline(src, frontend=fe, spec=spec, train=True, hops_ms=(10.0, 20.0),
                          max_frames=64, seed=1)
    planned = {i for e in range(2) for step in pipe.plan(e) for row in step for i, _ in row}
    assert sorted(pipe.bad_clips) == sorted(bad) and not planned & set(bad)
    assert all(bad[i] in msg for i, msg in pipe.bad_clips.items())
    ev = PackedPipeline(src, frontend=fe, spec=spec, train=False, max_frames=64)
    evaluated = [i for step in ev.plan(0) for row in step for i, _ in row]
    assert sorted(evaluated) == [i for i in range(12) if i not in bad]  # each once, bad out
    with pytest.raises(AudioError, match=r"/[1469]\.wav: .*on_bad_clip='skip'"):
        PackedPipeline(src, frontend=fe, spec=spec, train=True, max_frames=64,
                       on_bad_clip="fail").plan(0)


@pytest.mark.slow
def test_training_on_bad_clips_reports_them(tmp_path):
    meta, bad = bad_folder(tmp_path / "data", n=16)
    c = config(2)
    c.data.source = "folder"
    paths = {"csv_path": str(meta), "audio_dir": str(meta.parent / "audio")}
    c.data.train, c.data.eval = paths, paths
    c.elastic.update(eval_hops_ms=(10.0,), eval_max_frames=(64,))
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    assert jsonl(tmp_path / "w")[0]["train/bad_clips"] == len(bad)
    (row,) = final["eval_table"]
    assert row["bad_clips"] == len(bad) and row["num_clips"] == 16 - len(bad)


@pytest.mark.slow
def test_interrupted_resumed_run_equals_straight_run(tmp_path, monkeypatch):
    """Ctrl-C after step 3 saves step 3 and stops; resuming reaches the uninterrupted run's
    params bit for bit (same packed batches: the data position is in the checkpoint)."""
    handler = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN under `cmd &`
    straight = loop.train_and_evaluate(config(6, checkpoint_every=100), str(tmp_path / "s"))
    sigint_at_batch(monkeypatch, PackedPipeline, 2)
    stopped = loop.train_and_evaluate(config(6, checkpoint_every=100), str(tmp_path / "r"))
    assert stopped["step"] == 3 and steps_saved(tmp_path / "r") == ["3"]
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(config(6, checkpoint_every=100), str(tmp_path / "r"))
    assert resumed["step"] == 6
    chex.assert_trees_all_equal(resumed["state"].params, straight["state"].params)


@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back(tmp_path, capfd):
    work = tmp_path / "w"
    loop.train_and_evaluate(config(4, checkpoint_every=2), str(work))
    ckpts = work / "checkpoints"
    shutil.rmtree(ckpts / "4" / "state")
    capfd.readouterr()
    resumed = loop.train_and_evaluate(config(4, checkpoint_every=2), str(work))
    err = capfd.readouterr().err
    assert f"checkpoint {ckpts / '4'} is unreadable" in err and "falling back to step 2" in err
    assert resumed["step"] == 4 and (ckpts / "4.unreadable").is_dir()
    other = config(4, checkpoint_every=2)
    other.model.width = 32
    with pytest.raises(ValueError, match="cannot resume, the checkpoint's model differs"):
        loop.train_and_evaluate(other, str(work))


@pytest.mark.slow
def test_older_run_resumes_with_its_last_block_rule(tmp_path):
    """A run saved before the last block stopped reducing (its metadata has no
    "reduce_last_block") resumes in its workdir with the meaning it was trained with: ToMe
    in the last of its 2 blocks (configs/test_elastic.py: tome_r=2), saved as such."""
    from fast_ast_jax import checkpoints
    from fast_ast_jax.checkpoints.store import Checkpointer

    work = tmp_path / "w"
    loop.train_and_evaluate(config(2, checkpoint_every=2), str(work))
    ckpt = Checkpointer(work / "checkpoints", create=False)
    state, meta = ckpt.restore()
    ckpt.close()
    assert meta["model"].pop("reduce_last_block") is False
    shutil.rmtree(work / "checkpoints")
    old = Checkpointer(work / "checkpoints", every=1)
    old.save(2, state, meta)  # as an older version wrote it
    old.close()
    resumed = loop.train_and_evaluate(config(4, checkpoint_every=2), str(work))
    assert resumed["step"] == 4 and steps_saved(work) == ["2", "4"]
    model = checkpoints.load(work).model
    assert model.reduce_last_block and model.schedules()[0] == [2, 2]


@pytest.mark.parametrize("field,value,match", [
    ("elastic.max_tokens", 4, r"config\.elastic\.max_frames=64: a 64-frame clip is \d+ "
                               r"tokens, more than a row holds"),
    ("elastic.eval_max_frames", (32, 512), r"config\.elastic\.eval_max_frames=.*512-frame"),
    ("elastic.max_frames", 8, r"config\.elastic\.max_frames=8: every cap must be >= 16"),
    ("elastic.token_dropout", 1.0, r"config\.elastic\.token_dropout=1\.0: must lie in"),
    ("elastic.hops_ms", (), r"config\.elastic\.hops_ms=\(\): give one or more"),
    ("elastic.pool", "max", r"config\.elastic\.pool='max': use 'attn' or 'mean'"),
    ("elastic.rows", 0, r"config\.elastic\.rows=0: must be >= 1"),
    ("augment.mixup", 0.5, r"config\.augment\.mixup=0\.5: must be 0 with packing"),
])
def test_impossible_elastic_values(field, value, match, tmp_path):
    c = config(1)
    *parents, last = field.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        validate(read_config(c), device_count=1)
    with pytest.raises(ValueError, match=match):  # before any data is read
        loop.train_and_evaluate(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name,arg", [("test_elastic", None), ("fsdd_elastic", "fold"),
                                      ("fsdd_elastic", "kd"), ("fsdd_elastic", "official,kd"),
                                      ("audioset_elastic", None)])
def test_recipes_pass_validation(name, arg):
    c = load_config(name, arg)
    validate(read_config(c), device_count=1)
    if arg and "kd" in arg:  # ElasticAST + ToMe + CMKD (teacher file from the command line)
        assert c.model.tome_r > 0 and c.distill.lam == 0.5
        assert ("official" in arg) == ("official_split" in c.data.train.to_dict()["select"])


def test_packed_rows_split_over_devices_and_recipe_args():
    c = config(1)  # 2 rows per step
    with pytest.raises(ValueError, match=r"config\.elastic\.rows=2: must be a multiple of "
                                         r"the 4 devices"):
        validate(read_config(c), device_count=4)
    c.elastic.rows = 4
    c.eval_batch_size = 2
    with pytest.raises(ValueError, match=r"config\.eval_batch_size=2: must be a multiple of "
                                         r"the 4 devices"):
        validate(read_config(c), device_count=4)
    with pytest.raises(ValueError, match=r"fsdd_elastic\.py:kd,bogus: use ':fold' or"):
        load_config("fsdd_elastic", "kd,bogus")
