"""Data sources (synthetic, folder + CSV, TFDS) and the batching pipelines.

Every source is random access: `len(source)`, `source[i] -> {"id", "audio", "label"}`,
plus `labels` (names in logit order), `multi_label` and `sample_rate`; `ids` (every clip
id, without decoding audio) is optional. An unlabeled source (folder: a CSV read without
labels, or a bare folder of audio; for pretraining) has no label names and (0,) labels, so
its pipeline's targets are (B, 0).

A new source is one module with its class and one entry in `SOURCE_CLASSES`
(config.data.source names the entry; config.data.train / eval are the keyword arguments
of its constructor, which also receives `sample_rate`).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from fast_ast_jax.data.folder import FolderSource
from fast_ast_jax.data.synthetic import SyntheticSource

# config.data.source -> "module:class", imported when a source is built (tfds_source
# imports TensorFlow, ~8 s).
SOURCE_CLASSES = {
    "synthetic": "fast_ast_jax.data.synthetic:SyntheticSource",
    "folder": "fast_ast_jax.data.folder:FolderSource",
    "tfds": "fast_ast_jax.data.tfds_source:TfdsSource",
}
# The names of SOURCE_CLASSES, a live view: an entry added to the table is a source name.
SOURCES = SOURCE_CLASSES.keys()


def make_source(kind: str, *, sample_rate: int, **kwargs: Any):
    """Build a source by name; `kwargs` are the source's constructor arguments."""
    if kind not in SOURCE_CLASSES:
        raise ValueError(f"unknown data source {kind!r}; choose one of {tuple(SOURCES)}")
    module, name = SOURCE_CLASSES[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
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


__all__ = ["FolderSource", "SOURCES", "SOURCE_CLASSES", "SyntheticSource", "make_source",
           "source_ids"]
