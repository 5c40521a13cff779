"""Teacher-logits files: round trip (dense and top-k) and every error case."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fast_ast_jax import teacher_logits
from fast_ast_jax.distill import main as distill_main

RNG = np.random.default_rng(0)
LABELS = ["dog", "cat", "bird", "car"]


def _write(tmp_path, **kw):
    args = dict(ids=["a", "b", "c"], logits=RNG.normal(size=(3, 4)).astype(np.float32),
                labels=LABELS, teacher={"model": "cnn", "stages": "tiny"})
    args.update(kw)
    path = tmp_path / "teacher.npz"
    teacher_logits.save(path, **args)
    return path, args


def test_dense_round_trip(tmp_path):
    path, args = _write(tmp_path)
    t = teacher_logits.load(path)
    assert t.labels == tuple(LABELS) and t.ids == ("a", "b", "c")
    assert t.teacher == {"model": "cnn", "stages": "tiny"}
    np.testing.assert_array_equal(t.lookup(["c", "a"]), args["logits"][[2, 0]])
    t.check_labels(LABELS)


def test_topk_round_trip_fills_the_rest(tmp_path):
    logits = np.array([[0.0, 5.0, 1.0, -2.0], [3.0, 2.0, 1.0, 4.0], [1.0, 1.5, 9.0, 0.5]],
                      np.float32)
    path, _ = _write(tmp_path, logits=logits, top_k=2, fill_value=-50.0)
    t = teacher_logits.load(path)
    want = np.full_like(logits, -50.0)
    for i, row in enumerate(logits):
        top = np.argsort(-row)[:2]
        want[i, top] = row[top]
    np.testing.assert_array_equal(t.logits, want)


def test_missing_id_names_file_and_first_id(tmp_path):
    path, _ = _write(tmp_path)
    t = teacher_logits.load(path)
    with pytest.raises(teacher_logits.TeacherLogitsError, match=r"teacher\.npz.*'zz'.*2 clip"):
        t.lookup(["a", "zz", "yy"])


def test_label_mismatch_is_an_error(tmp_path):
    path, _ = _write(tmp_path)
    t = teacher_logits.load(path)
    with pytest.raises(teacher_logits.TeacherLogitsError, match="4 classes.*3"):
        t.check_labels(LABELS[:3])
    with pytest.raises(teacher_logits.TeacherLogitsError, match="class 1 is 'cat'.*'cow'"):
        t.check_labels(["dog", "cow", "bird", "car"])


def test_nan_is_an_error_on_save_and_on_load(tmp_path):
    bad = RNG.normal(size=(3, 4)).astype(np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(teacher_logits.TeacherLogitsError, match="'b'"):
        _write(tmp_path, logits=bad)
    # An external writer that skipped our checks.
    path = tmp_path / "ext.npz"
    np.savez(path, ids=np.array(["x", "y"]), logits=np.array([[0.0, np.inf]], np.float32)
             .repeat(2, 0), labels=np.array(["p", "q"]))
    with pytest.raises(teacher_logits.TeacherLogitsError, match="ext.npz.*'x'"):
        teacher_logits.load(path)


def test_duplicate_ids_shape_mismatch_and_unreadable_files(tmp_path):
    with pytest.raises(teacher_logits.TeacherLogitsError, match="'a' appears more than once"):
        _write(tmp_path, ids=["a", "a", "c"])
    with pytest.raises(teacher_logits.TeacherLogitsError, match=r"\(3, 4\).*classes=5"):
        _write(tmp_path, labels=LABELS + ["x"])
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(teacher_logits.TeacherLogitsError, match="junk.npz.*not a readable"):
        teacher_logits.load(junk)
    with pytest.raises(teacher_logits.TeacherLogitsError, match="not found"):
        teacher_logits.load(tmp_path / "nope.npz")
    partial = tmp_path / "partial.npz"
    np.savez(partial, ids=np.array(["a"]), labels=np.array(["p"]))
    with pytest.raises(teacher_logits.TeacherLogitsError, match="missing array 'logits'"):
        teacher_logits.load(partial)


def test_external_writer_without_optional_fields(tmp_path):
    path = tmp_path / "external.npz"
    np.savez(path, ids=np.array(["k1", "k2"]), logits=np.eye(2, dtype=np.float32),
             labels=np.array(["yes", "no"]))
    t = teacher_logits.load(path)
    assert t.teacher == {} and t.num_classes == 2
    np.testing.assert_array_equal(t.lookup(["k2"]), [[0.0, 1.0]])
    json.dumps(t.teacher)


def test_ensemble_averages_members_by_clip_id(tmp_path):
    a = RNG.normal(size=(3, 4)).astype(np.float32)
    b = RNG.normal(size=(3, 4)).astype(np.float32)
    teacher_logits.save(tmp_path / "a.npz", ids=["x", "y", "z"], logits=a, labels=LABELS,
                        teacher={"model_class": "cnn", "split": "train"})
    teacher_logits.save(tmp_path / "b.npz", ids=["z", "x", "y"], logits=b, labels=LABELS,
                        teacher={"model_class": "ast", "split": "train"})  # another clip order
    distill_main(["ensemble", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                  "--out", str(tmp_path / "e.npz")])
    e = teacher_logits.load(tmp_path / "e.npz")
    np.testing.assert_allclose(e.lookup(["x", "y", "z"]), (a + b[[1, 2, 0]]) / 2, rtol=1e-6)
    assert e.teacher["model_class"] == "ensemble" and e.teacher["split"] == "train"
    assert [m["model_class"] for m in e.teacher["members"]] == ["cnn", "ast"]
    teacher_logits.save(tmp_path / "c.npz", ids=["x", "y", "w"], logits=a, labels=LABELS,
                        teacher={})
    with pytest.raises(teacher_logits.TeacherLogitsError, match=r"c\.npz and .*a\.npz hold "
                                                         r"different clips \(e\.g\. 'w'\)"):
        teacher_logits.ensemble([tmp_path / "a.npz", tmp_path / "c.npz"], out=tmp_path / "f.npz")
    teacher_logits.save(tmp_path / "d.npz", ids=["x", "y", "z"], logits=a, labels=LABELS[::-1],
                        teacher={})
    with pytest.raises(teacher_logits.TeacherLogitsError, match=r"d\.npz: labels .* differ"):
        teacher_logits.ensemble([tmp_path / "a.npz", tmp_path / "d.npz"], out=tmp_path / "f.npz")
    with pytest.raises(teacher_logits.TeacherLogitsError, match="two or more files"):
        teacher_logits.ensemble([tmp_path / "a.npz"], out=tmp_path / "f.npz")


def test_dump_cli_rejects_a_negative_worker_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        distill_main(["dump", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "t.npz"),
                      "--workers", "-1"])
    assert exit_info.value.code == 2
    assert "--workers -1: give a count >= 0" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()
