"""Data sources (synthetic, folder + CSV, TFDS) and the batching pipeline.

Every source is random access: `len(source)`, `source[i] -> {"id", "audio", "label"}`,
plus `labels` (names in logit order), `multi_label` and `sample_rate`.
"""
from __future__ import annotations

from typing import Any

from fast_ast_jax.data.folder import FolderSource
from fast_ast_jax.data.synthetic import SyntheticSource

SOURCES = ("synthetic", "folder", "tfds")


def make_source(kind: str, *, sample_rate: int, **kwargs: Any):
    """Build a source by name; `kwargs` are the source's constructor arguments."""
    if kind == "synthetic":
        return SyntheticSource(sample_rate=sample_rate, **kwargs)
    if kind == "folder":
        return FolderSource(sample_rate=sample_rate, **kwargs)
    if kind == "tfds":
        from fast_ast_jax.data.tfds_source import TfdsSource  # lazy: imports TensorFlow

        return TfdsSource(sample_rate=sample_rate, **kwargs)
    raise ValueError(f"unknown data source {kind!r}; choose one of {SOURCES}")


__all__ = ["FolderSource", "SOURCES", "SyntheticSource", "make_source"]
