"""Data sources (synthetic, folder + CSV, TFDS) and the batching pipeline.

Every source is random access: `len(source)`, `source[i] -> {"id", "audio", "label"}`,
plus `labels` (names in logit order), `multi_label` and `sample_rate`. An unlabeled source
(folder: a CSV read without labels, or a bare folder of audio; for pretraining) has no
label names and (0,) labels, so its pipeline's targets are (B, 0).
"""
from __future__ import annotations

import inspect
from typing import Any

from fast_ast_jax.data.folder import FolderSource
from fast_ast_jax.data.synthetic import SyntheticSource

SOURCES = ("synthetic", "folder", "tfds")


def make_source(kind: str, *, sample_rate: int, **kwargs: Any):
    """Build a source by name; `kwargs` are the source's constructor arguments."""
    if kind == "synthetic":
        cls = SyntheticSource
    elif kind == "folder":
        cls = FolderSource
    elif kind == "tfds":
        from fast_ast_jax.data.tfds_source import TfdsSource  # lazy: imports TensorFlow

        cls = TfdsSource
    else:
        raise ValueError(f"unknown data source {kind!r}; choose one of {SOURCES}")
    allowed = set(inspect.signature(cls).parameters) - {"sample_rate"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"data source {kind!r} has no argument(s) {unknown} (check "
                         f"config.data.train / config.data.eval); it takes {sorted(allowed)}")
    return cls(sample_rate=sample_rate, **kwargs)


def source_ids(source) -> list[str]:
    """Every clip id of a source in example order: its `ids` attribute when it has one
    (no audio decoding), else `source[i]["id"]` for each example."""
    ids = getattr(source, "ids", None)
    if ids is None:
        ids = [source[i]["id"] for i in range(len(source))]
    return [str(i) for i in ids]


__all__ = ["FolderSource", "SOURCES", "SyntheticSource", "make_source", "source_ids"]
