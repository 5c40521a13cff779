"""Elastic training: packed native-length / variable-hop pipeline, one compiled program."""
from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from fast_ast_jax import checkpoints
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import SyntheticSource
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.models.elastic import ElasticAST
from fast_ast_jax import sharding
from fast_ast_jax.train import elastic, loop
from fast_ast_jax.train.evaluation import evaluate_checkpoint
from fast_ast_jax.train.forward import eval_forward
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from tests.helpers import load_config, write_folder

FRONTEND = FrontEnd(num_mel_bins=32, target_frames=64)
SPEC = PackSpec(rows=2, max_tokens=40, max_slots=8)


@pytest.fixture(scope="module")
def source():
    return SyntheticSource(num_examples=12, split="eval", min_seconds=0.2, max_seconds=0.6,
                           sample_rate=16000)


def test_pipeline_native_lengths_hops_and_fixed_shapes(source):
    pipe = PackedPipeline(source, frontend=FRONTEND, spec=SPEC, train=True,
                          hops_ms=(10.0, 40.0), max_frames=48, token_dropout=0.1, seed=1)
    frames10, frames40 = len(pipe.clip(0, 10.0)[0]), len(pipe.clip(0, 40.0)[0])
    assert frames40 < frames10 <= 48  # native length, capped; the hop recomputes the fbank
    uncached = PackedPipeline(source, frontend=FRONTEND, spec=SPEC, train=True,
                              hops_ms=(10.0, 40.0), max_frames=48, seed=1, cache=False)
    for i in range(len(source)):  # planning lengths from the audio equal the fbank's
        for hop in (10.0, 40.0):
            assert uncached.num_frames(i, hop) == len(pipe.clip(i, hop)[0])
    np.testing.assert_array_equal(uncached.clip(3, 40.0)[0], pipe.clip(3, 40.0)[0])
    shapes, hops, seen = set(), set(), []
    for e in range(2):
        for i in range(pipe.steps(e)):
            b = pipe.batch(e, i)
            shapes.add(tuple((k, v.shape, v.dtype.str) for k, v in sorted(b.items())))
            hops.update(h for row in pipe.plan(e)[i] for _, h in row)
            seen.extend(b["slot_index"][b["slot_index"] >= 0].tolist())
            np.testing.assert_array_equal(b["mask"] > 0, b["slot_index"] >= 0)
            np.testing.assert_array_equal(b["y"][b["mask"] == 0], 0.0)
    assert len(shapes) == 1 and hops == {10.0, 40.0}
    real = sum(int((pipe.batch(0, i)["segment_ids"] > 0).sum()) for i in range(pipe.steps(0)))
    assert pipe.efficiency(0) == pytest.approx(real / (pipe.steps(0) * 2 * 40))
    assert len(set(seen)) > 6  # clips of both epochs, several steps
    again = PackedPipeline(source, frontend=FRONTEND, spec=SPEC, train=True,
                           hops_ms=(10.0, 40.0), max_frames=48, token_dropout=0.1, seed=1)
    np.testing.assert_array_equal(again.batch(1, 0)["patches"], pipe.batch(1, 0)["patches"])


@pytest.mark.slow
def test_sweep_runs_every_length_and_hop_through_one_program(source):
    model = ElasticAST(num_classes=len(source.labels), width=32, depth=2, num_heads=2,
                       mlp_dim=64, num_mel_bins=32, frames=64, tome_r=2)  # merges in block 0
    pipe = PackedPipeline(source, frontend=FRONTEND, spec=SPEC, train=False)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), pipe.batch(0, 0))["params"]
    mesh = sharding.make_mesh()
    rows = elastic.evaluate_table(params, model=model, mesh=mesh, pipelines=(
        elastic.table_pipelines(source, frontend=FRONTEND, spec=SPEC,
                                hops_ms=(10.0, 25.0, 40.0), max_frames=(32, 64))))
    assert [(r["hop_ms"], r["max_frames"]) for r in rows] == [
        (h, f) for h in (10.0, 25.0, 40.0) for f in (32, 64)]
    assert all(r["num_clips"] == len(source) for r in rows)
    for r in rows:  # a count of correct clips over all clips of the source
        assert r["accuracy"] * len(source) == pytest.approx(round(r["accuracy"] * len(source)))
    # one compiled program for the whole table
    assert eval_forward(model, mesh)._cache_size() == 1


@pytest.mark.slow
def test_one_step_test_config(tmp_path):
    c = load_config("test_elastic")
    c.num_steps = 3
    c.log_every = 1
    final = loop.train_and_evaluate(c, str(tmp_path / "work"))
    assert final["step"] == 3 and np.isfinite(final["train_loss"])
    assert final["train_compilations"] == 1  # 3 steps of different lengths and hops
    table = final["eval_table"]
    assert [(r["hop_ms"], r["max_frames"]) for r in table] == [
        (10.0, 32), (10.0, 64), (20.0, 32), (20.0, 64)]
    lines = [json.loads(s) for s in (tmp_path / "work" / "metrics.jsonl").read_text()
             .splitlines()]
    assert "train/loss" in lines[0] and any("eval/hop20_len64/accuracy" in s for s in lines)
    assert isinstance(checkpoints.load(tmp_path / "work").model, ElasticAST)
    rows = evaluate_checkpoint(tmp_path / "work", echo=None, settings=({}, {"tome_r": 0}))
    assert len(rows) == 8 and rows[4]["tome_r"] == 0
    for got, want in zip(rows[:4], table):
        assert got["accuracy"] == pytest.approx(want["accuracy"])
    # the same table with the clips loaded in a worker process (evaluate.py --workers 1)
    in_worker = evaluate_checkpoint(tmp_path / "work", echo=None, workers=1)
    assert [r["accuracy"] for r in in_worker] == [r["accuracy"] for r in rows[:4]]
    # resuming with a later target continues from the saved step
    c.num_steps = 4
    assert loop.train_and_evaluate(c, str(tmp_path / "work"))["step"] == 4


@pytest.mark.slow
def test_fsdd_elastic_config_on_generated_folder(tmp_path):
    c = load_config("fsdd_elastic", "official")
    rows = [(f"{i}.wav", str(i % 3), "train" if i < 8 else "test") for i in range(12)]
    meta = write_folder(tmp_path / "data", rows, header=("filename", "label",
                                                         "official_split"))
    paths = {"csv_path": str(meta), "audio_dir": str(tmp_path / "data" / "audio")}
    c.data.train.update(paths)
    c.data.eval.update(paths)
    c.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.frontend.update(num_mel_bins=32)
    c.elastic.update(rows=2, max_tokens=64, eval_hops_ms=(10.0, 40.0),
                     eval_max_frames=(64,))
    c.update(num_steps=1, log_every=1, checkpoint_every=1)
    final = loop.train_and_evaluate(c, str(tmp_path / "work"))
    assert final["step"] == 1 and np.isfinite(final["train_loss"])
    assert [r["num_clips"] for r in final["eval_table"]] == [4.0, 4.0]


def test_recipe_configs_build():
    for arg in ("resolution", "length"):
        c = load_config("audioset_elastic", arg)
        model = build_model(read_config(c).model, num_classes=5)
        assert model.fstride == model.tstride == 16 and c.elastic.max_tokens == 2048
    res = load_config("audioset_elastic", "resolution").elastic
    assert res.hops_ms[0] == 10.0 and res.hops_ms[-1] == 40.0 and len(res.hops_ms) == 16
    with pytest.raises(ValueError, match=r"augment\.mixup=0\.5: must be 0 with packing"):
        from fast_ast_jax.audio.augment import Augment
        PackedPipeline(SyntheticSource(num_examples=2, sample_rate=16000), frontend=FRONTEND,
                       spec=SPEC, train=True, augment=Augment(mixup=0.5))


@pytest.mark.slow
def test_init_from_pretrained_hf_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from fast_ast_jax import convert
    from fast_ast_jax.models.ast import AST

    cfg = transformers.ASTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=256, num_mel_bins=32, max_length=64,
                                 frequency_stride=16, time_stride=16, num_labels=8)
    transformers.ASTForAudioClassification(cfg).save_pretrained(tmp_path / "hf")
    c = load_config("test_elastic")
    c.update(num_steps=1, init_from=str(tmp_path / "hf"))
    c.model.update(depth=1, tome_r=0)
    c.elastic.update(pos_embedding="ast", pool="mean")
    c.optim.update(lr=0.0, weight_decay=0.0)  # the step leaves the loaded weights as they are
    c.data.eval = {}
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    params = final["state"].params
    ast = AST(num_classes=8, width=64, depth=1, num_heads=2, mlp_dim=256, fstride=16,
              tstride=16, num_mel_bins=32, frames=64)
    expected = convert.load_into(ast, tmp_path / "hf", seed=c.seed)
    for name in ("patch_embed", "block_0", "norm", "head_norm", "head"):
        chex.assert_trees_all_close(params[name], expected[name], atol=1e-7)
    np.testing.assert_allclose(params["pos_embed"][0, 2:], expected["pos_embed"][0, 2:],
                               atol=1e-7)


@pytest.mark.slow
def test_fsdd_elastic_table_script(tmp_path):
    """benchmarks/fsdd_elastic.py end to end on generated clips: a padded AST run, the
    packed run, and the table (padded at other hops/caps, packed with and without ToMe)."""
    from benchmarks import fsdd_elastic
    from fast_ast_jax.train import loop

    rows = [(f"{i}.wav", str(i % 3), "train" if i < 8 else "test") for i in range(12)]
    meta = write_folder(tmp_path / "data", rows, header=("filename", "label",
                                                         "official_split"))
    paths = {"csv_path": str(meta), "audio_dir": str(tmp_path / "data" / "audio")}
    tiny = {"model.width": 32, "model.depth": 1, "model.num_heads": 2, "model.mlp_dim": 64,
            "frontend.num_mel_bins": 32, "num_steps": 2, "log_every": 1, "batch_size": 4}
    padded = load_config("fsdd", "official")
    for key, value in tiny.items():
        section, _, field = key.rpartition(".")
        (padded[section] if section else padded)[field] = value
    padded.data.train.update(paths)
    padded.data.eval.update(paths)
    loop.train_and_evaluate(padded, str(tmp_path / "padded"))
    sets = [f"{k}={v}" for k, v in tiny.items()] + [
        f"data.{split}.{k}={v}" for split in ("train", "eval") for k, v in paths.items()] + [
        "elastic.rows=2", "elastic.max_tokens=64", "elastic.eval_hops_ms=(10.0, 40.0)",
        "elastic.eval_max_frames=(32, 64)"]
    out = tmp_path / "table.md"
    fsdd_elastic.main(["--split", "official", "--padded", str(tmp_path / "padded"),
                       "--workdir", str(tmp_path / "packed"), "--r", "1", "--out", str(out)]
                      + [a for s in sets for a in ("--set", s)])
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert "10 ms / 32 | 10 ms / 64 | 40 ms / 32 | 40 ms / 64" in lines[0]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| padded AST (10 ms, 128 frames)", "| packed ElasticAST",
        "| packed ElasticAST + ToMe r=1"]
    for line in lines[1:]:
        cells = line.strip("| ").split(" | ")
        assert 0 < float(cells[2]) <= 1 and all(0 <= float(c) <= 1 for c in cells[3:])


def test_cache_dir_stores_fbanks_once_for_every_hop(source, tmp_path):
    """config.data.cache_dir in packed runs: every clip at every hop is featurised once,
    stored, and a later pipeline (another run, another host) reads the file, not the audio."""
    kw = dict(frontend=FRONTEND, spec=SPEC, train=True, hops_ms=(10.0, 40.0), max_frames=48,
              seed=1, cache_dir=tmp_path, cache_key="synthetic eval 12")
    first = PackedPipeline(source, **kw)
    assert len(list(tmp_path.glob("clips-*.npz"))) == 2  # one file per hop

    class NoAudio:
        labels, multi_label, sample_rate = source.labels, False, source.sample_rate

        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            raise AssertionError("read the audio despite the cache")

    again = PackedPipeline(NoAudio(), **kw)
    for key in ("patches", "segment_ids", "positions", "slot_index", "y"):
        np.testing.assert_array_equal(again.batch(1, 0)[key], first.batch(1, 0)[key])
