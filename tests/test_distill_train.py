"""Distillation end to end: CNN teacher training, `distill dump`, FastAST students (ToMe +
CMKD) for every FastAST config, teacher logits through the pipeline (mixup), and bad teacher
files failing before any training step."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fast_ast_jax import teacher_logits
from fast_ast_jax.distill import main as distill_main
from fast_ast_jax.train.dump import dump
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import SyntheticSource, source_ids
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.data.clips import ClipStore, teacher_probs
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.models import CNNTeacher
from fast_ast_jax.inference import predict
from fast_ast_jax.checkpoints import load as load_checkpoint
from fast_ast_jax.train import loop, task
from fast_ast_jax.train.evaluation import evaluate_checkpoint
from fast_ast_jax.train.spec import checkpoint_run, read_config
from tests.helpers import folder_data, load_config, run_one_step, tiny


FSDD_HEADER = ("filename", "label", "official_split")


def fsdd_rows(n=12):
    return [(f"{i}.wav", str(i % 3), "train" if i < 8 else "test") for i in range(n)]


def tiny_cnn(c):
    c = tiny(c)
    c.model.cnn.update(stages="tiny", stem_channels=16, feature_dim=32)
    return c


def with_data(c, paths):
    c.data.train.update(paths)
    c.data.eval.update(paths)
    return c


def metrics(workdir):
    return [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]


def random_teacher_file(path, *, ids, labels, seed=0):
    logits = np.random.default_rng(seed).normal(size=(len(ids), len(labels)))
    teacher_logits.save(path, ids=ids, logits=logits, labels=labels, teacher={"model": "random"})
    return str(path)


@pytest.mark.slow
def test_cnn_teacher_trains_evaluates_and_predicts(tmp_path):
    paths = folder_data(tmp_path, FSDD_HEADER, fsdd_rows())
    c = with_data(tiny_cnn(load_config("fsdd_teacher_cnn", "official")), paths)
    assert c.model.name == "cnn" and c.data.train.select.to_dict() == {"official_split": "train"}
    run_one_step(c, tmp_path, reevaluate=True)
    restored = load_checkpoint(tmp_path / "work")
    assert isinstance(restored.model, CNNTeacher) and restored.model.stages == "tiny"
    rows = evaluate_checkpoint(tmp_path / "work", echo=None)
    assert rows[0]["xla_flops"] > 0 and "macs" not in rows[0]  # MACs are counted for ASTs
    with pytest.raises(ValueError, match="apply to an AST or ElasticAST only"):
        evaluate_checkpoint(tmp_path / "work", settings=[{"tome_r": 2}], echo=None)
    out = predict([tmp_path / "data" / "audio" / "0.wav"], checkpoint=tmp_path / "work",
                  top_k=2)
    assert len(out[0]) == 2


@pytest.mark.slow
def test_teacher_dump_then_fastast_student(tmp_path, capsys):
    """CNN teacher (2 steps) -> `distill dump` -> FastAST student (ToMe + CMKD, mixup)."""
    paths = folder_data(tmp_path, FSDD_HEADER, fsdd_rows())
    teacher = with_data(tiny_cnn(load_config("fsdd_teacher_cnn", "official")), paths)
    teacher.num_steps = 2
    loop.train_and_evaluate(teacher, str(tmp_path / "teacher"))
    out = tmp_path / "teacher.npz"
    distill_main(["dump", "--checkpoint", str(tmp_path / "teacher"), "--split", "train",
                  "--out", str(out)])
    t = teacher_logits.load(out)
    assert t.ids == tuple(f"{i}.wav" for i in range(8)) and t.labels == ("0", "1", "2")
    assert t.teacher["model_class"] == "cnn" and t.teacher["step"] == 2
    assert t.teacher["model"]["stages"] == "tiny"
    # The dumped logits are the teacher's deterministic forward pass on its own features.
    restored = load_checkpoint(tmp_path / "teacher")
    pipe = task.build_pipeline(checkpoint_run(restored), "train", train=False)
    x = np.stack([pipe.example(i)[0] for i in range(2)])
    want = restored.model.apply({"params": restored.params}, x, train=False)
    np.testing.assert_allclose(t.logits[:2], want, rtol=1e-4, atol=1e-5)
    distill_main(["inspect", str(out)])
    assert "8 clips x 3 classes, dense" in capsys.readouterr().out
    distill_main(["dump", "--checkpoint", str(tmp_path / "teacher"), "--out",
                  str(tmp_path / "top1.npz"), "--top_k", "1"])
    distill_main(["inspect", str(tmp_path / "top1.npz")])
    assert "top-1" in capsys.readouterr().out

    student = with_data(tiny(load_config("fsdd_fastast", "official")), paths)
    assert student.model.tome_r > 0
    student.model.tome_r = 1
    student.augment.mixup = 0.5
    student.num_steps, student.log_every = 2, 1
    student.distill.teacher_logits = str(out)
    final = run_one_step_n(student, tmp_path / "student", steps=2)
    logged = metrics(tmp_path / "student")[0]
    assert np.isfinite(logged["train/kd_loss"]) and np.isfinite(logged["train/task_loss"])
    lam = student.distill.lam
    assert logged["train/loss"] == pytest.approx(
        lam * logged["train/task_loss"] + (1 - lam) * logged["train/kd_loss"], rel=1e-5)
    assert np.isfinite(final["train_loss"])
    # A trained AST serves as a teacher too.
    ast_teacher = dump(tmp_path / "student", out=tmp_path / "ast.npz", echo=None)
    assert ast_teacher.teacher["model_class"] == "ast" and ast_teacher.ids == t.ids
    assert ast_teacher.teacher["model"]["tome_r"] == 1


def run_one_step_n(c, workdir, *, steps):
    final = loop.train_and_evaluate(c, str(workdir))
    assert final["step"] == steps and np.isfinite(final["train_loss"])
    return final


@pytest.mark.parametrize("name,header,rows,multi", [
    ("esc50_fastast", ("filename", "fold", "category"),
     [(f"{i}.wav", str(i % 5 + 1), ["dog", "rain", "siren"][i % 3]) for i in range(15)],
     False),
    ("speechcommands_fastast", ("filename", "label", "split"),
     [(f"{i}.wav", ["yes", "no", "up"][i % 3], "train" if i < 8 else "valid")
      for i in range(12)], False),
    ("audioset_fastast", ("filename", "label", "unused"),
     [(f"{i}.wav", ["/m/a", "/m/a;/m/b", "/m/c", "/m/b;/m/c"][i % 4], "") for i in range(8)],
     True),
])
@pytest.mark.slow
def test_paper_fastast_recipes_one_step(name, header, rows, multi, tmp_path):
    c = load_config(name)
    assert c.model.tome_r > 0 and c.distill.lam == 0.1 and c.distill.tau == 1.0
    c = with_data(tiny(c, frames=96), folder_data(tmp_path, header, rows))
    c.optim.warmup_steps = min(c.optim.warmup_steps, 1)
    src = task.split_source(read_config(c), "train")
    c.distill.teacher_logits = random_teacher_file(tmp_path / "t.npz", ids=source_ids(src),
                                                   labels=src.labels)
    run_one_step(c, tmp_path, expect_map=multi)
    assert np.isfinite(metrics(tmp_path / "work")[0]["train/kd_loss"])


def _hand_probs(stored, idx, *, num_classes, tau, multilabel):
    """Teacher predictions written out by hand from a file's stored logits: idx None =
    dense; else top-k (stored[k] is the logit of class idx[k], other classes have p = 0)."""
    out = np.zeros(num_classes)
    classes = np.arange(num_classes) if idx is None else idx
    z = np.asarray(stored, np.float64) / tau
    out[classes] = 1 / (1 + np.exp(-z)) if multilabel else np.exp(z) / np.exp(z).sum()
    return out


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("multilabel", [False, True])
def test_mixup_mixes_teacher_predictions_like_labels(tmp_path, top_k, multilabel):
    src = SyntheticSource(num_examples=8, sample_rate=16000, min_seconds=0.1, max_seconds=0.2)
    fe = FrontEnd(num_mel_bins=16, target_frames=16)
    labels = [src[i]["label"] for i in range(8)]
    assert sorted(labels) == list(range(8))  # a clip's label names the clip
    logits = 4 * np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    path = tmp_path / "t.npz"
    teacher_logits.save(path, ids=source_ids(src), logits=logits, labels=src.labels, teacher={},
                        top_k=top_k)
    with np.load(path) as f:
        stored = f["logits"]
        idx = f["topk_indices"] if top_k else [None] * 8
    tau = 2.0
    pipe = Pipeline(src, frontend=fe, batch_size=8, train=True, teacher=teacher_logits.load(path),
                    teacher_tau=tau, teacher_multilabel=multilabel,
                    augment=Augment(mixup=1.0), process_index=0, process_count=1)
    batch = pipe.batch(0, 0)
    mixed = 0
    for j, i in enumerate(pipe._order(0)[:8]):
        y = batch["y"][j]
        a = labels[i]  # this clip; the partner is the other class of its mixed label
        lam = y[a]
        others = [c for c in np.flatnonzero(y > 0) if c != a]
        b = labels.index(others[0]) if others else i
        mixed += bool(others)
        want = sum(w * _hand_probs(stored[k], idx[k], num_classes=8, tau=tau,
                                   multilabel=multilabel)
                   for w, k in ((lam, i), (1 - lam, b)))
        np.testing.assert_allclose(batch["teacher_probs"][j], want, rtol=1e-5, atol=1e-7)
        if top_k:  # the union of both clips' top-k classes stays > 0 (no fill-logit zeros)
            assert (batch["teacher_probs"][j] > 0).sum() == len(set(idx[i]) | set(idx[b]))
    assert mixed >= 4  # most examples really were mixed
    eval_pipe = Pipeline(src, frontend=fe, batch_size=6, train=False,
                         teacher=teacher_logits.load(path), teacher_tau=tau,
                         teacher_multilabel=multilabel, process_index=0, process_count=1)
    last = eval_pipe.batch(0, 1)  # 2 real clips + 4 padding rows
    for j, i in enumerate((6, 7)):
        np.testing.assert_allclose(last["teacher_probs"][j], _hand_probs(
            stored[i], idx[i], num_classes=8, tau=tau, multilabel=multilabel), rtol=1e-5,
            atol=1e-7)
    assert not last["teacher_probs"][2:].any()


def test_mixing_predictions_not_logits():
    # Logits 5 and -10 mixed half and half: the mixed prediction is ~0.5 (0.4967), where
    # the mixed logit -2.5 would say 0.076.
    p = teacher_probs(np.array([[5.0], [-10.0]]), tau=1.0, multilabel=True)
    assert 0.5 * p[0, 0] + 0.5 * p[1, 0] == pytest.approx(0.49665, abs=1e-4)


def _bad_file(tmp_path, kind, ids, labels):
    path = tmp_path / f"{kind}.npz"
    logits = np.zeros((len(ids), len(labels)), np.float32)
    if kind == "missing":
        ids = ids[:3] + ids[4:]
        logits = logits[1:]
    elif kind == "labels":
        labels = labels[:-1] + ["other"]
    elif kind == "count":
        labels = labels + ["extra"]
        logits = np.zeros((len(ids), len(labels)), np.float32)
    elif kind == "nan":
        logits[5, 1] = np.nan
        # save() refuses NaN; an external program might still write one.
        np.savez(path, ids=np.asarray(ids), logits=logits, labels=np.asarray(labels))
        return path
    teacher_logits.save(path, ids=ids, logits=logits, labels=labels, teacher={})
    return path


@pytest.mark.parametrize("kind,match", [
    ("missing", r"missing\.npz: no teacher logits for clip id '3\.wav'"),
    ("labels", r"labels\.npz: class 2 is 'other' for the teacher but '2'"),
    ("count", r"count\.npz: the teacher has 4 classes, the student's data has 3"),
    ("nan", r"nan\.npz: non-finite .* clip id '5\.wav'"),
])
def test_bad_teacher_file_fails_before_training(kind, match, tmp_path, monkeypatch):
    paths = folder_data(tmp_path, FSDD_HEADER, fsdd_rows())
    c = with_data(tiny(load_config("fsdd_fastast", "official")), paths)
    ids, labels = [f"{i}.wav" for i in range(8)], ["0", "1", "2"]
    c.distill.teacher_logits = str(_bad_file(tmp_path, kind, ids, labels))

    def no_features(self, *a, **k):
        raise AssertionError("featurised clips before validating the teacher file")

    monkeypatch.setattr(ClipStore, "featurise_all", no_features)
    with pytest.raises(teacher_logits.TeacherLogitsError, match=match):
        loop.train_and_evaluate(c, str(tmp_path / "work"))
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_fsdd_table_script_overrides():
    import importlib.util

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("fsdd_fastast_bench",
                                                  ROOT / "benchmarks" / "fsdd_fastast.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    c = bench.override(load_config("fsdd_fastast", "official"),
                       ["num_steps=3", "model.tome_r=2", "distill.teacher_logits=t.npz",
                        'data.train.select={"official_split": "train", "speaker": "theo"}'])
    assert (c.num_steps, c.model.tome_r, c.distill.teacher_logits) == (3, 2, "t.npz")
    assert c.data.train.select.speaker == "theo"
    with pytest.raises(KeyError, match="no field 'model.bogus'"):
        bench.override(c, ["model.bogus=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.override(c, ["num_steps"])


@pytest.mark.slow
def test_fsdd_table_script_end_to_end(tmp_path):
    """benchmarks/fsdd_fastast.py --ensemble on generated clips with tiny models: every row
    trained (1 step), evaluated and printed; the ensemble teacher file has both members."""
    from benchmarks import fsdd_fastast

    paths = folder_data(tmp_path, FSDD_HEADER, fsdd_rows())
    sets = [f"data.{split}.{k}={v}" for split in ("train", "eval") for k, v in paths.items()]
    sets += ["model.width=32", "model.depth=1", "model.num_heads=2", "model.mlp_dim=64",
             "frontend.target_frames=64", "frontend.num_mel_bins=32", "batch_size=4",
             "eval_batch_size=4", "num_steps=1", "log_every=1", "model.tome_r=2"]
    out = tmp_path / "table.md"
    fsdd_fastast.main(["--split", "official", "--workdir", str(tmp_path / "w"), "--ensemble",
                       "--out", str(out), "--cnn-set", "model.cnn.stages='tiny'",
                       "--cnn-set", "model.cnn.feature_dim=32"]
                      + [a for s in sets for a in ("--set", s)])
    rows = [line.split(" | ") for line in out.read_text().splitlines()[6:]
            if line.startswith("| ")]
    assert [r[0] for r in rows] == [
        "| CNN teacher", "| AST baseline", "| CNN + AST baseline ensemble (teacher, mean logits)",
        "| AST + off-the-shelf ToMe (r=2)", "| AST trained with ToMe (r=2)",
        "| AST trained with ToMe (r=2) + CMKD (lam=0.5, tau=1.0)",
        "| AST trained with ToMe (r=2) + KD from the ensemble"]
    assert all(0 <= float(r[1]) <= 1 for r in rows) and rows[2][3:] == ["—", "— |"]
    members = teacher_logits.load(tmp_path / "w" / "ensemble_train.npz").teacher["members"]
    assert [m["model_class"] for m in members] == ["cnn", "ast"]
