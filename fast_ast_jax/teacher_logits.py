"""Teacher logits for cross-model distillation (CMKD, arXiv 2203.06760): one file, keyed by
clip id.

Teacher logits are computed once, by any model (our CNN teacher, a trained AST, or an
external program), and read by the data pipeline next to each clip.

File format (`.npz`, written with numpy; external teachers can write it too):
    ids          (N,)   str     clip ids, unique (the ids the data source yields)
    logits       (N, C) float32 dense logits, or (N, K) with `topk_indices` for sparse files
    topk_indices (N, K) int32   optional: class index of each stored logit (top-k files)
    fill_value   ()     float32 optional: logit of every class not stored (top-k files)
    labels       (C,)   str     class names in logit order (must equal the student's labels)
    teacher      ()     str     JSON: who made it (model fields, checkpoint, date, ...)
    format_version ()   int32   1

Top-k files keep only the K largest logits per clip (AudioSet has 527 classes); the others
are read as `fill_value` (default -1000: probability 0 under sigmoid and softmax, yet finite
so KL terms stay 0 * finite, never NaN).

This module reads, validates and writes the format and imports no training code (training
reads it); `dump` (fast_ast_jax.train.dump) runs a checkpoint over a data split, and the
command line (fast_ast_jax/distill.py) is a thin layer over `dump`, `ensemble` and `summary`:
    python -m fast_ast_jax.distill dump --checkpoint WORKDIR [--config FILE[:ARG]] \
        [--split train] --out teacher.npz [--top_k K]
    python -m fast_ast_jax.distill ensemble a.npz b.npz [...] --out teacher.npz
    python -m fast_ast_jax.distill inspect teacher.npz

An ensemble teacher averages the logits of several files (e.g. the CNN teacher and a
trained AST: their errors differ, so the mean is a stronger teacher than either).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from fast_ast_jax import atomic

FORMAT_VERSION = 1
DEFAULT_FILL = -1000.0


class TeacherLogitsError(ValueError):
    """A teacher-logits file that does not match the data or the student."""


@dataclasses.dataclass(frozen=True)
class TeacherLogits:
    """Dense teacher logits for a set of clips (loaded from a file)."""

    path: str
    ids: tuple[str, ...]
    logits: np.ndarray  # (N, C) float32
    labels: tuple[str, ...]
    teacher: dict[str, Any]

    def __post_init__(self):
        object.__setattr__(self, "_index", {cid: i for i, cid in enumerate(self.ids)})

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise unless the student's label names equal the teacher's, in order."""
        labels = tuple(str(l) for l in labels)
        if labels == self.labels:
            return
        if len(labels) != len(self.labels):
            raise TeacherLogitsError(
                f"{self.path}: the teacher has {len(self.labels)} classes, the student's data "
                f"has {len(labels)}; dump the teacher logits for this dataset's label set")
        first = next(i for i, (a, b) in enumerate(zip(labels, self.labels)) if a != b)
        raise TeacherLogitsError(
            f"{self.path}: class {first} is {self.labels[first]!r} for the teacher but "
            f"{labels[first]!r} for the student; the label order must be identical")

    def check_ids(self, ids: Iterable[str]) -> None:
        """Raise, naming the first offending id, unless every id has teacher logits."""
        missing = [cid for cid in ids if cid not in self._index]
        if missing:
            raise TeacherLogitsError(
                f"{self.path}: no teacher logits for clip id {missing[0]!r} "
                f"({len(missing)} clip(s) missing); re-run `python -m fast_ast_jax.distill dump` "
                "on the same data source")

    def index(self, clip_id: str) -> int:
        """Row of `clip_id` in `logits` (KeyError if absent; check_ids gives the message)."""
        return self._index[clip_id]

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), C) float32 teacher logits, in the order of `ids`."""
        self.check_ids(ids)
        return self.logits[[self._index[cid] for cid in ids]]


def save(path: str | os.PathLike, *, ids: Sequence[str], logits: np.ndarray,
         labels: Sequence[str], teacher: dict[str, Any], top_k: int | None = None,
         fill_value: float = DEFAULT_FILL) -> None:
    """Write a teacher-logits file.

    Args:
        path: output .npz path (written atomically: a temporary file, then renamed).
        ids: (N,) unique clip ids.
        logits: (N, C) teacher logits.
        labels: (C,) class names in logit order.
        teacher: JSON-serialisable description of the teacher.
        top_k: keep only the k largest logits per clip (None = dense).
        fill_value: logit read for classes dropped by top_k.
    """
    logits = np.asarray(logits, np.float32)
    ids = np.asarray([str(i) for i in ids])
    if logits.ndim != 2 or logits.shape[0] != len(ids) or logits.shape[1] != len(labels):
        raise TeacherLogitsError(f"logits {logits.shape} must be (clips={len(ids)}, "
                                 f"classes={len(labels)})")
    _check_finite(str(path), ids, logits)
    _check_unique(str(path), ids)
    arrays = dict(ids=ids, labels=np.asarray([str(l) for l in labels]),
                  teacher=np.asarray(json.dumps(teacher, sort_keys=True)),
                  format_version=np.asarray(FORMAT_VERSION, np.int32))
    if top_k is not None and top_k < logits.shape[1]:
        if top_k < 1:
            raise TeacherLogitsError(f"top_k={top_k} must be >= 1")
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :top_k].astype(np.int32)
        arrays.update(logits=np.take_along_axis(logits, idx, axis=1), topk_indices=idx,
                      fill_value=np.asarray(fill_value, np.float32))
    else:
        arrays.update(logits=logits)
    with atomic.replacing(path) as tmp:
        np.savez(tmp, **arrays)


def load(path: str | os.PathLike) -> TeacherLogits:
    """Read and validate a teacher-logits file (dense or top-k)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TeacherLogitsError(f"{path}: teacher-logits file not found; create it with "
                                 "`python -m fast_ast_jax.distill dump ...`")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # zip/npy errors: the file is not a readable .npz
        raise TeacherLogitsError(f"{path}: not a readable teacher-logits .npz file ({e})")
    for key in ("ids", "logits", "labels"):
        if key not in data:
            raise TeacherLogitsError(f"{path}: missing array {key!r}; expected keys ids, "
                                     "logits, labels[, topk_indices, fill_value, teacher]")
    version = int(data.get("format_version", FORMAT_VERSION))
    if version != FORMAT_VERSION:
        raise TeacherLogitsError(f"{path}: format_version {version} is not supported "
                                 f"(this library reads {FORMAT_VERSION})")
    ids = np.asarray(data["ids"]).astype(str)
    labels = tuple(np.asarray(data["labels"]).astype(str).tolist())
    logits = np.asarray(data["logits"], np.float32)
    if logits.ndim != 2 or logits.shape[0] != len(ids):
        raise TeacherLogitsError(f"{path}: logits shape {logits.shape} does not match "
                                 f"{len(ids)} ids")
    _check_unique(path, ids)
    if "topk_indices" in data:
        idx = np.asarray(data["topk_indices"])
        if idx.shape != logits.shape:
            raise TeacherLogitsError(f"{path}: topk_indices {idx.shape} and logits "
                                     f"{logits.shape} differ in shape")
        if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
            raise TeacherLogitsError(f"{path}: topk_indices outside [0, {len(labels)})")
        fill = float(data.get("fill_value", DEFAULT_FILL))
        dense = np.full((len(ids), len(labels)), fill, np.float32)
        np.put_along_axis(dense, idx.astype(np.int64), logits, axis=1)
        logits = dense
    elif logits.shape[1] != len(labels):
        raise TeacherLogitsError(f"{path}: {logits.shape[1]} logits per clip but "
                                 f"{len(labels)} label names")
    _check_finite(path, ids, logits)
    teacher = json.loads(str(data["teacher"])) if "teacher" in data else {}
    return TeacherLogits(path=path, ids=tuple(ids.tolist()), logits=logits, labels=labels,
                         teacher=teacher)


def _check_finite(path: str, ids: np.ndarray, logits: np.ndarray) -> None:
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise TeacherLogitsError(f"{path}: non-finite (NaN/Inf) teacher logits for clip id "
                                 f"{str(ids[first])!r} ({int(bad.sum())} clip(s) affected)")


def _check_unique(path: str, ids: np.ndarray) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = str(uniq[np.argmax(counts > 1)])
        raise TeacherLogitsError(f"{path}: clip id {dup!r} appears "
                                 "more than once; ids must be unique")


def ensemble(paths: Sequence[str | os.PathLike], *, out: str | os.PathLike,
             top_k: int | None = None) -> TeacherLogits:
    """Write the mean logits of several teacher files (same clip ids and labels) to `out`.

    Raises TeacherLogitsError naming the file whose labels or clip ids differ from the
    first file's.
    """
    if len(paths) < 2:
        raise TeacherLogitsError(f"an ensemble needs two or more files, got {list(paths)}")
    members = [load(p) for p in paths]
    first = members[0]
    for m in members[1:]:
        if m.labels != first.labels:
            raise TeacherLogitsError(f"{m.path}: labels {list(m.labels)} differ from "
                                     f"{first.path}'s {list(first.labels)}")
        if set(m.ids) != set(first.ids):
            odd = sorted(set(m.ids) ^ set(first.ids))[0]
            raise TeacherLogitsError(f"{m.path} and {first.path} hold different clips (e.g. "
                                     f"{odd!r}); dump every member on the same data split")
    logits = np.mean([m.lookup(first.ids) for m in members], axis=0)
    split = {m.teacher.get("split") for m in members}
    teacher = {"model_class": "ensemble", "checkpoint": " + ".join(m.path for m in members),
               "split": split.pop() if len(split) == 1 else "?", "step": "-",
               "members": [m.teacher for m in members]}
    save(out, ids=first.ids, logits=logits, labels=first.labels, teacher=teacher,
         top_k=top_k)
    return load(out)


def summary(teacher_logits: TeacherLogits, *, top_k: int | None = None) -> str:
    """A few lines describing a teacher-logits file."""
    t = teacher_logits
    who = t.teacher
    kind = f"top-{top_k}" if top_k else "dense"
    if top_k is None:  # loaded files are dense in memory; read the stored layout
        with np.load(t.path, allow_pickle=False) as f:
            if "topk_indices" in f.files:
                kind = f"top-{f['topk_indices'].shape[1]} (others = {float(f['fill_value'])})"
    shown = ", ".join(t.labels[:10]) + (", ..." if len(t.labels) > 10 else "")
    lines = [f"{t.path}: {len(t.ids)} clips x {t.num_classes} classes, {kind}",
             f"  labels: {shown}",
             f"  teacher: {who.get('model_class', '?')} from {who.get('checkpoint', '?')} "
             f"(step {who.get('step', '?')}, split {who.get('split', '?')})",
             f"  logits: mean {t.logits.mean():.3f}, std {t.logits.std():.3f}, "
             f"min {t.logits.min():.3f}, max {t.logits.max():.3f}"]
    return "\n".join(lines)
