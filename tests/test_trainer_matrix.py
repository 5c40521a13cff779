"""One trainer for every kind of run: {padded, packed} x {no reduction, ToMe, TopK} x
{no KD, KD}. Every cell trains one step, checkpoints, resumes for a second step, evaluates
and predicts (generated audio, 1-block width-32 models)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fast_ast_jax import teacher_logits
from fast_ast_jax.data import SyntheticSource, source_ids
from fast_ast_jax.data.packed import PackedPipeline
from fast_ast_jax.inference import predict
from fast_ast_jax.train import loop
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import make_task
from tests.helpers import load_config, write_folder


TRAIN = {"num_examples": 16, "split": "train", "min_seconds": 0.2, "max_seconds": 0.5}
EVAL = {"num_examples": 6, "split": "eval", "min_seconds": 0.2, "max_seconds": 0.5}
REDUCTIONS = {"none": dict(tome_r=0),
              "tome": dict(tome_r=1),
              "topk": dict(tome_r=0, prune_keep_rate=0.5, prune_layers=(0,))}
KINDS = ("padded", "packed")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """Random teacher logits for every clip id of the TRAIN split."""
    source = SyntheticSource(sample_rate=16000, **TRAIN)
    path = tmp_path_factory.mktemp("teacher") / "teacher.npz"
    logits = np.random.default_rng(0).normal(size=(len(source), len(source.labels)))
    teacher_logits.save(path, ids=source_ids(source), logits=logits, labels=source.labels,
                        teacher={"model_class": "random"})
    return str(path)


def cell_config(kind: str, reduction: str, kd: str | None):
    """configs/test.py (padded) or configs/test_elastic.py (packed), shrunk: 16 training
    clips, 6 eval clips, a 2-block width-32 model (reducing in block 0: the last block never
    does), 1 step per call."""
    c = load_config("test" if kind == "padded" else "test_elastic")
    c.data.train, c.data.eval = dict(TRAIN), dict(EVAL)
    c.frontend.update(target_frames=64, num_mel_bins=32)
    c.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, **REDUCTIONS[reduction])
    c.update(num_steps=1, log_every=1, checkpoint_every=1)
    c.optim.schedule = "constant"  # the 1- and 2-step calls run the same program
    if kind == "packed":  # 2 rows per train step, 4 per eval step
        c.elastic.update(eval_hops_ms=(10.0, 20.0), eval_max_frames=(64,))
        c.eval_batch_size = 4
    if kd:
        c.distill.update(teacher_logits=kd, lam=0.5, tau=2.0)
    return c


CELLS = [(k, r, kd) for k in KINDS for r in REDUCTIONS for kd in (False, True)]
_trained: dict[tuple, str] = {}  # cell -> workdir, reused by the predict test


def train_cell(cell, tmp_path_factory, teacher_file) -> str:
    if cell not in _trained:
        kind, reduction, kd = cell
        work = tmp_path_factory.mktemp("-".join(map(str, cell)))
        _trained[cell] = str(work)
        c = cell_config(kind, reduction, teacher_file if kd else None)
        first = loop.train_and_evaluate(c, str(work))
        assert first["step"] == 1 and np.isfinite(first["train_loss"])
        assert first["train_compilations"] == 1
    return _trained[cell]


@pytest.mark.parametrize("cell", CELLS, ids=["-".join(map(str, c)) for c in CELLS])
@pytest.mark.slow
def test_cell_trains_checkpoints_resumes_and_evaluates(cell, tmp_path_factory, teacher_file,
                                                       capsys):
    kind, reduction, kd = cell
    work = train_cell(cell, tmp_path_factory, teacher_file)
    c = cell_config(kind, reduction, teacher_file if kd else None)
    c.num_steps = 2
    final = loop.train_and_evaluate(c, work)  # resumes from the step-1 checkpoint
    assert "resumed from step 1" in capsys.readouterr().out
    assert final["step"] == 2 and np.isfinite(final["train_loss"])
    logged = [json.loads(s) for s in open(f"{work}/metrics.jsonl").read().splitlines()]
    train = [r for r in logged if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(("train/kd_loss" in r) == kd for r in train)  # the KD loss is in use
    if kd:
        assert all(np.isfinite([r["train/kd_loss"], r["train/task_loss"]]).all()
                   for r in train)
    assert 0.0 <= final["eval_accuracy"] <= 1.0 and final["eval_num_clips"] == 6
    if kind == "packed":  # the hop x length table, every cell over all eval clips
        assert [(r["hop_ms"], r["max_frames"]) for r in final["eval_table"]] == [
            (10.0, 64), (20.0, 64)]
        assert all(r["num_clips"] == 6 for r in final["eval_table"])
        assert final["eval_table"][0]["accuracy"] == final["eval_accuracy"]


@pytest.mark.parametrize("cell", CELLS, ids=["-".join(map(str, c)) for c in CELLS])
@pytest.mark.slow
def test_cell_predicts(cell, tmp_path_factory, teacher_file):
    work = train_cell(cell, tmp_path_factory, teacher_file)
    folder = tmp_path_factory.mktemp("clips")
    write_folder(folder, [("a.wav", "x", "1"), ("b.wav", "y", "1")], sr=22050)
    out = predict([str(folder / "audio" / f) for f in ("a.wav", "b.wav")], checkpoint=work,
                  top_k=2)
    assert len(out) == 2 and all(len(o) == 2 for o in out)
    scores = [s for _, s in out[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6


def test_packed_clips_carry_their_teacher_rows(teacher_file, tmp_path):
    """Each packed slot holds its own clip's teacher predictions at tau (as y per slot);
    empty slots 0."""
    c = cell_config("packed", "none", teacher_file)
    teacher = teacher_logits.load(teacher_file)
    task = make_task(read_config(c), workdir=tmp_path, teacher=teacher)
    pipe: PackedPipeline = task.train
    # config.eval_batch_size = eval rows per step (elastic.rows for training)
    assert pipe.spec.rows == 2 and [p.spec.rows for _, _, p in task.evals] == [4, 4]
    ids = source_ids(pipe.source)
    batch = pipe.batch(0, 0)
    valid = batch["slot_index"] >= 0
    assert batch["teacher_probs"].shape == batch["y"].shape and valid.sum() > 1
    logits = teacher.lookup([ids[i] for i in batch["slot_index"][valid]]) / c.distill.tau
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # softmax at tau
    np.testing.assert_allclose(batch["teacher_probs"][valid], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(batch["teacher_probs"][~valid], 0.0)
