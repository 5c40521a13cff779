"""End to end: one-step train + evaluate per config, checkpoints, resumption, sharding."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.checkpoints.store import Checkpointer
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.train import loop
from fast_ast_jax.train.evaluation import evaluate_checkpoint, parse_sweep
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from fast_ast_jax.inference import predict
from tests import xla_settings
from tests.helpers import (folder_data, load_config, run_one_step, sharded_configs, tiny,
                           write_folder)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["test", pytest.param("demo", marks=pytest.mark.slow)])
def test_synthetic_configs_one_step(name, tmp_path):
    c = tiny(load_config(name))
    c.data.train.num_examples, c.data.eval.num_examples = 8, 6
    run_one_step(c, tmp_path)


@pytest.mark.slow
def test_fsdd_config_on_generated_folder(tmp_path):
    c = tiny(load_config("fsdd", "official"))
    rows = [(f"{i}.wav", str(i % 3), "train" if i < 8 else "test") for i in range(12)]
    paths = folder_data(tmp_path, ("filename", "label", "official_split"), rows)
    c.data.train.update(paths)
    c.data.eval.update(paths)
    final = run_one_step(c, tmp_path, reevaluate=True)
    # evaluate.py --workers 1: the same accuracy with the clips loaded in a worker process
    rows = evaluate_checkpoint(tmp_path / "work", echo=None, workers=1)
    assert rows[0]["accuracy"] == pytest.approx(final["eval_accuracy"])
    with pytest.raises(ValueError, match="workers=-1"):
        evaluate_checkpoint(tmp_path / "work", echo=None, workers=-1)


@pytest.mark.slow
def test_fsdd_config_on_real_data(tmp_path):
    c = load_config("fsdd")
    if not Path(c.data.train.csv_path).is_file():
        pytest.skip(reason="../shared/data/fsdd is absent (covered on generated audio above)")
    c = tiny(c)
    c.data.cache = False  # featurise only the clips a step touches
    c.data.eval.select = {"fold": "test", "speaker": "theo", "label": "3"}  # 50 clips
    final = run_one_step(c, tmp_path)
    assert final["eval_num_clips"] == 50


@pytest.mark.slow
def test_esc50_recipe_one_step(tmp_path):
    c = tiny(load_config("esc50", "fold=2"))
    rows = [(f"{i}.wav", str(i % 5 + 1), ["dog", "rain", "siren"][i % 3]) for i in range(15)]
    paths = folder_data(tmp_path, ("filename", "fold", "category"), rows)
    c.data.train.update(paths)
    c.data.eval.update(paths)
    run_one_step(c, tmp_path)


@pytest.mark.slow
def test_speechcommands_recipe_one_step_bf16(tmp_path):
    c = tiny(load_config("speechcommands"))
    c.model.dtype = "bfloat16"
    rows = [(f"{i}.wav", ["yes", "no", "up"][i % 3], "train" if i < 8 else "valid")
            for i in range(12)]
    paths = folder_data(tmp_path, ("filename", "label", "split"), rows)
    c.data.train.update(paths)
    c.data.eval.update(paths)
    run_one_step(c, tmp_path, reevaluate=True)


@pytest.mark.slow
def test_audioset_recipe_one_step(tmp_path):
    c = tiny(load_config("audioset"), frames=96)
    c.optim.warmup_steps = 1
    assert c.data.worker_count == 8 and not c.data.cache
    c.data.worker_count = 1  # the recipe's loader processes, one here
    labels = ["/m/a", "/m/a;/m/b", "/m/c", "/m/b;/m/c"]
    rows = [(f"{i}.wav", labels[i % 4], "") for i in range(8)]
    paths = folder_data(tmp_path, ("filename", "label", "unused"), rows)
    c.data.train.update(paths)
    c.data.eval.update(paths)
    run_one_step(c, tmp_path, expect_map=True, reevaluate=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
def test_spoken_digit_tfds_one_step(fmt, tmp_path):
    c = load_config("spoken_digit_tfds", fmt)
    if not Path(c.data.train.data_dir, "spoken_digit").is_dir():
        pytest.skip(reason="../shared/data/tfds* is absent (TFDS is covered by mock data below)")
    c = tiny(c)
    c.data.cache = False
    c.data.eval.split = "train[:6]"
    final = run_one_step(c, tmp_path)
    assert final["eval_num_clips"] == 6


def test_tfds_source_on_mock_data():  # the fast tier's test of data/tfds_source.py
    import tensorflow_datasets as tfds

    from fast_ast_jax.data.tfds_source import TfdsSource

    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        src = TfdsSource(name="spoken_digit", split="train", sample_rate=16000, bit_depth=64)
        assert len(src) == 5 and src.labels == [str(d) for d in range(10)]
        ex = src[0]
        assert ex["audio"].dtype == np.float32 and 0 <= ex["label"] < 10


def test_checkpoint_roundtrip(tmp_path):
    state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(7),
             "rng": jax.random.PRNGKey(3)}
    meta = {"data_position": [2, 5], "labels": ["a", "b"], "model": {"tome_r": [1, 2]}}
    ckpt = Checkpointer(tmp_path, every=5)
    assert not ckpt.save(3, state, meta)  # not a multiple of `every`
    assert ckpt.save(5, state, meta)
    ckpt.close()
    ckpt = Checkpointer(tmp_path)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
    restored, meta2 = ckpt.restore(target=target)
    ckpt.close()
    chex.assert_trees_all_equal(restored, state)
    assert meta2 == meta


@pytest.mark.slow
def test_resume_with_another_model_config_is_refused(tmp_path):
    """Orbax would restore a 2-block checkpoint into a 1-block model without complaint."""
    c = tiny(load_config("test"))
    c.model.depth = 2
    loop.train_and_evaluate(c, str(tmp_path / "work"))
    c.model.depth = 1
    c.num_steps = 2
    with pytest.raises(ValueError, match="cannot resume.*model.*depth: checkpoint 2 vs "
                                         "config 1"):
        loop.train_and_evaluate(c, str(tmp_path / "work"))
    # A square patch is stored as an int, as every checkpoint before patches were pairs
    # holds it: the config's (16, 16) pair resumes such a checkpoint, another patch does not.
    ckpt = Checkpointer(tmp_path / "work" / "checkpoints", create=False)
    _, meta = ckpt.restore()
    ckpt.close()
    assert meta["model"]["patch_size"] == 16 and c.model.patch_size == (16, 16)
    c.model.depth = 2
    assert loop.train_and_evaluate(c, str(tmp_path / "work"))["step"] == 2
    c.model.update(patch_size=(32, 2), tstride=2)
    c.num_steps = 3
    with pytest.raises(ValueError, match=r"cannot resume.*patch_size: checkpoint 16 vs "
                                         r"config \[32, 2\]"):
        loop.train_and_evaluate(c, str(tmp_path / "work"))


@pytest.mark.slow
def test_interrupted_run_resumes_same_order_and_params(tmp_path, monkeypatch):
    def config():
        c = load_config("test")
        c.update(num_steps=6, checkpoint_every=2, log_every=1)
        c.data.eval = {}
        return c

    straight = loop.train_and_evaluate(config(), str(tmp_path / "a"))

    original = Pipeline.iterate

    def crashing(self, **kw):  # dies while building the 5th batch (epoch 1)
        for k, item in enumerate(original(self, **kw)):
            if k == 4:
                raise RuntimeError("simulated crash")
            yield item

    monkeypatch.setattr(Pipeline, "iterate", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train_and_evaluate(config(), str(tmp_path / "b"))
    monkeypatch.setattr(Pipeline, "iterate", original)
    resumed = loop.train_and_evaluate(config(), str(tmp_path / "b"))
    assert resumed["step"] == 6
    chex.assert_trees_all_close(resumed["state"].params, straight["state"].params,
                                rtol=1e-6, atol=1e-7)
    losses = lambda d: [json.loads(s)["train/loss"] for s in
                        (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    a, b = losses("a"), losses("b")
    assert len(b) == 4 + 2  # steps 1-4, then 5-6 after the resume from step 4
    np.testing.assert_allclose(b, a, rtol=1e-5)

    # Preemption: SIGTERM -> checkpoint at the current step (not a multiple of
    # checkpoint_every) and stop; the next run resumes there.
    def preempted(self, **kw):
        for k, item in enumerate(original(self, **kw)):
            if k == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    monkeypatch.setattr(Pipeline, "iterate", preempted)
    stopped = loop.train_and_evaluate(config(), str(tmp_path / "c"))
    assert stopped["step"] == 4  # finished the step under way, then saved and stopped
    monkeypatch.setattr(Pipeline, "iterate", original)
    resumed = loop.train_and_evaluate(config(), str(tmp_path / "c"))
    chex.assert_trees_all_close(resumed["state"].params, straight["state"].params,
                                rtol=1e-6, atol=1e-7)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from fast_ast_jax import sharding
    from fast_ast_jax.train import loop
    from tests.helpers import sharded_configs
    assert jax.device_count() == 8
    seen = {}
    global_batch = sharding.global_batch

    def recording(local, mesh):  # the first batch of each run, as the train step gets it
        out = global_batch(local, mesh)
        key = "x" if "x" in out else "patches"
        seen.setdefault(run, {"devices": len(out[key].sharding.device_set),
                              "global": list(out[key].shape),
                              "shards": sorted({tuple(s.data.shape)
                                                for s in out[key].addressable_shards})})
        return out

    sharding.global_batch = recording
    out = {}
    for run, c in sharded_configs().items():
        final = loop.train_and_evaluate(c, sys.argv[2] + "/" + run)
        flat = jax.tree_util.tree_flatten_with_path(final["state"].params)[0]
        out.update({run + jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
        if c.param_sharding == "fsdp":
            shardings = {str(l.sharding.spec) for l in jax.tree.leaves(final["state"].params)}
            assert any("'data'" in s for s in shardings), shardings
    np.savez(sys.argv[2] + "/params.npz", **out)
    with open(sys.argv[2] + "/batches.json", "w") as f:
        json.dump(seen, f)
""")


@pytest.mark.slow
def test_sharded_training_matches_one_device(tmp_path):
    """8 simulated devices (a subprocess: XLA flags are read when jax starts) give the loss,
    gradient norm and parameters of 1 device, padded and packed, and the step's batch
    really is split over the 8 devices."""
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(ROOT), str(tmp_path)],
                          capture_output=True, text=True, env=xla_settings.with_devices(8),
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((tmp_path / "batches.json").read_text())
    assert seen["padded_fsdp"] == {"devices": 8, "global": [8, 48, 32],
                                   "shards": [[1, 48, 32]]}
    assert seen["packed_fsdp"] == {"devices": 8, "global": [8, 48, 256],
                                   "shards": [[1, 48, 256]]}  # one packed row per device

    def logged(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return np.array([[json.loads(s)[f"train/{k}"] for k in ("loss", "grad_norm")]
                         for s in lines])

    configs, ones = sharded_configs(), {}
    for kind in ("padded", "packed"):  # 1 device: fsdp has nothing to split
        one = loop.train_and_evaluate(configs[f"{kind}_fsdp"], str(tmp_path / f"one_{kind}"))
        ones[kind] = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                      jax.tree_util.tree_flatten_with_path(one["state"].params)[0]}
    with np.load(tmp_path / "params.npz") as eight:
        for run in configs:
            kind = run.split("_")[0]
            # Loss and gradient norm per step catch a wrong cross-device reduction (Adam's
            # normalised updates would hide a scaled gradient); near-zero gradient entries
            # make Adam updates of size ~lr sensitive to rounding, hence atol on params.
            np.testing.assert_allclose(logged(run), logged(f"one_{kind}"), rtol=1e-4)
            diff = max(float(np.abs(eight[run + k] - v).max()) for k, v in ones[kind].items())
            print(f"{run}: 8 vs 1 device max |param difference| {diff:.2e}, max |loss "
                  f"difference| {np.abs(logged(run) - logged(f'one_{kind}'))[:, 0].max():.2e}")
            for k, v in ones[kind].items():
                np.testing.assert_allclose(eight[run + k], v, rtol=1e-3, atol=2e-4)
    # A checkpoint written by 8 devices with sharded params restores on 1 device.
    rows = evaluate_checkpoint(tmp_path / "padded_fsdp", config=load_config("test"),
                               echo=None)
    correct = rows[0]["accuracy"] * rows[0]["num_clips"]  # a count of the 16 eval clips
    assert rows[0]["num_clips"] == 16 and correct == pytest.approx(round(correct), abs=1e-6)


@pytest.mark.slow
def test_tome_training_evaluate_sweep_and_predict(tmp_path):
    c = load_config("test")
    c.num_steps = 1
    # Two blocks: the last block never reduces (it computes only the class tokens,
    # AST.prefix_only_last_block), so the settings below reduce in block 0.
    c.model.update(depth=2, tome_schedule="blocks:1")  # train with token merging (FastAST)
    loop.train_and_evaluate(c, str(tmp_path / "w"))
    printed = []
    rows = evaluate_checkpoint(tmp_path / "w", settings=[
        {"tome_r": 0}, {"tome_r": "blocks:2"}, {"prune_keep_rate": 0.5, "prune_layers": (0,)}],
        plot=tmp_path / "s.png", echo=printed.append)  # --keep_rate 0.5 --prune_layers 0
    assert len(rows) == 3 and rows[0]["speedup"] == 1.0 and (tmp_path / "s.png").stat().st_size
    assert rows[1]["macs"] < rows[0]["macs"] and rows[2]["macs"] < rows[0]["macs"]
    for r in rows:  # the speedup the MACs promise, next to the measured one
        assert r["mac_ratio"] == pytest.approx(rows[0]["macs"] / r["macs"])
        assert r["speedup"] == pytest.approx(r["clips_per_s"] / rows[0]["clips_per_s"])
    table, footer = printed
    assert table.splitlines()[0].split(" | ")[4:7] == [f"{k:>12}" for k in (
            "macs", "mac_ratio", "speedup")]
    assert "median of 7 rounds interleaving the settings" in footer
    assert "1-minute load average" in footer and " at start, " in footer
    assert parse_sweep("r=0,8") == [{"tome_r": 0}, {"tome_r": 8}]
    assert parse_sweep("keep_rate=0.7")[0]["prune_keep_rate"] == 0.7
    with pytest.raises(ValueError, match="NAME"):
        parse_sweep("bogus=1")
    meta = write_folder(tmp_path / "clips", [("a.wav", "x", "1"), ("b.wav", "y", "1")],
                        sr=22050)
    files = [str(tmp_path / "clips" / "audio" / f) for f in ("a.wav", "b.wav")]
    out = predict(files, checkpoint=tmp_path / "w", top_k=3)
    assert len(out) == 2 and len(out[0]) == 3
    scores = [s for _, s in out[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert meta.is_file()


def test_sweep_footer_says_what_clips_per_s_measured_and_why_a_cheaper_row_was_slower():
    from fast_ast_jax.train.evaluation import _footer, _with_ratios

    rows = _with_ratios([{"tome_r": r, "clips_per_s": s, "macs": m} for r, s, m in [
            (0, 100.0, 100.0), (4, 95.0, 80.0), (8, 70.0, 60.0), (12, 150.0, 50.0)]])
    assert [r["mac_ratio"] for r in rows] == pytest.approx([1.0, 1.25, 100 / 60, 2.0])
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 0.95, 0.7, 1.5])
    lines = _footer(rows, timed=("timed so", 0.1), loads=(0.5, 2.0)).splitlines()
    assert lines[0] == ("clips/s: timed so. 1-minute load average 0.50 at start, 2.00 at "
                        "end; above 1.5, other processes share the cores and the timings "
                        "are not the machine's.")
    assert lines[1].startswith("note: tome_r=4 needs 1.25x fewer MACs but measured 0.95x: "
                               "within this run's timing noise, not a slowdown")
    assert lines[2].startswith("note: tome_r=8 needs 1.67x fewer MACs but measured 0.70x, "
                               "beyond this run's timing noise: at this model size")
    assert len(lines) == 3  # r=12: cheaper and faster, nothing to explain
    # One pass (noise unknown) on an idle machine: a slower cheaper row is called noise.
    quiet = _footer(rows[:2], timed=("one pass", None), loads=(0.5, 0.7)).splitlines()
    assert quiet[0].endswith("0.70 at end.") and "timing noise" in quiet[1]


def test_result_table_columns():
    """evaluate.py's table: the keys in first-seen order (num_clips left out), floats to 4
    significant digits, a key a row lacks left blank."""
    from fast_ast_jax.train.table import format_table

    lines = format_table([{"tome_r": 0, "accuracy": 0.5, "num_clips": 8.0},
                          {"tome_r": 8, "accuracy": 0.123456, "macs": 2.5e6}]).splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["tome_r", "accuracy", "macs"]
    assert [c.strip() for c in lines[1].split(" | ")] == ["0", "0.5", ""]
    assert [c.strip() for c in lines[2].split(" | ")] == ["8", "0.1235", "2.5e+06"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


@pytest.mark.slow
def test_init_from_pretrained_hf_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from fast_ast_jax import convert

    cfg = transformers.ASTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=256, num_mel_bins=32, max_length=64,
                                 frequency_stride=16, time_stride=16, num_labels=3)
    transformers.ASTForAudioClassification(cfg).save_pretrained(tmp_path / "hf")
    c = load_config("test")
    c.update(num_steps=1, init_from=str(tmp_path / "hf"))
    c.frontend.target_frames = 64
    c.optim.lr = 0.0  # the step leaves the loaded weights as they are
    c.data.eval = {}
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    model = build_model(read_config(c).model, num_classes=8)
    expected = convert.load_into(model, tmp_path / "hf", seed=c.seed)
    chex.assert_trees_all_close(final["state"].params, expected, atol=1e-7)
