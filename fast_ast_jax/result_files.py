"""Result files of many-file inference: predictions (.csv, .jsonl), embeddings (.npz,
.parquet).

Predictions (`PredictionTable`, of inference.FileResult), one row per input file, in input
order, failed ones included:
    .csv: file, label_1, score_1, ..., label_k, score_k, duration_s, windows, error;
    .jsonl: {"file", "labels" [k], "scores" [k], "duration_s", "windows", "error"}.

Embeddings (`write_embeddings`, of embeddings.embed_files' inference.Scored):
--out x.npz (NumPy arrays):
    files (F,) str, embeddings (F, W) float32, duration_s (F,): the files embedded, in
        input order;
    failed (E,) str, errors (E,) str: the files that could not be read and why;
    with tokens: tokens (K, N, W) float32 over all K windows, token_file (K,) int (the
        row of `files`), token_window_s (K, 2) (start, end seconds).
--out x.parquet (Apache Parquet, written with pyarrow; pandas, polars, DuckDB read it):
    one row per input file, in input order, failed ones included: file (string),
    duration_s (float64), embedding (fixed_size_list<float32>[W]), error (string); a failed
    file has a null duration_s and embedding and its reason in error (null when it worked).
    With tokens also x.tokens.parquet, one row per window: file (string, as in x.parquet),
    window (int32, from 0 in the file), start_s, end_s (float64) and tokens, an Arrow
    fixed-shape tensor (f_dim, t_dim, W) float32 (the canonical extension type
    arrow.fixed_shape_tensor, its shape in the schema). A second table because windows per
    file vary: each table stays flat, one row per file / per window, and joins on `file`.
    Read the tokens as one array: `pyarrow.parquet.read_table(path)["tokens"]
    .combine_chunks().to_numpy_ndarray()` (K, f_dim, t_dim, W); a reader that does not know
    the extension type sees its storage, a fixed_size_list<float32>[f_dim * t_dim * W] per
    row (C order).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fast_ast_jax.inference import FileResult, Scored

PREDICTION_SUFFIXES = (".csv", ".jsonl")
EMBEDDING_SUFFIXES = (".npz", ".parquet")


def check_suffix(path: str | os.PathLike, suffixes: Sequence[str]) -> str:
    """The lower-case suffix of `path`; a ValueError naming the path unless it is one of
    `suffixes` (checked before any work, so a run does not end on an unwritable name)."""
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise ValueError(f"--out {path}: use a {' or '.join(suffixes)} file name")
    return suffix


class PredictionTable:
    """Rows of predictions written as they come (module docstring): `write` each
    inference.FileResult, then `close`."""

    def __init__(self, path: str | os.PathLike, *, top_k: int):
        self.jsonl = check_suffix(path, PREDICTION_SUFFIXES) == ".jsonl"
        self.top_k = top_k
        self._file = open(path, "w", newline="")
        if not self.jsonl:
            self._csv = csv.writer(self._file)
            self._csv.writerow(["file"] + [f"{kind}_{i + 1}" for i in range(top_k)
                                           for kind in ("label", "score")]
                               + ["duration_s", "windows", "error"])

    def write(self, r: FileResult) -> None:
        if self.jsonl:
            self._file.write(json.dumps({
                "file": r.file, "labels": [label for label, _ in r.top],
                "scores": [score for _, score in r.top], "duration_s": r.duration,
                "windows": len(r.windows), "error": r.error}) + "\n")
            return
        cells = [c for label, score in r.top for c in (label, f"{score:.6g}")]
        cells += [""] * (2 * self.top_k - len(cells))
        self._csv.writerow([r.file, *cells, "" if r.duration is None else f"{r.duration:.3f}",
                            len(r.windows), r.error or ""])

    def close(self) -> None:
        self._file.close()


def write_embeddings(path: str | os.PathLike, results: Sequence[Scored], *, tokens: bool,
                     grid: tuple[int, int], width: int) -> list[str]:
    """The .npz or .parquet file(s) of `embed_files` results, by `path`'s suffix; `grid`
    (f_dim, t_dim) and `width` (W) are the encoder's, the shape of every window's tokens.
    Returns the paths written."""
    if check_suffix(path, EMBEDDING_SUFFIXES) == ".npz":
        return write_npz(path, results, tokens=tokens)
    return write_parquet(path, results, tokens=tokens, grid=grid, width=width)


def write_npz(path: str | os.PathLike, results: Sequence[Scored], *, tokens: bool
              ) -> list[str]:
    """The .npz file (module docstring) of `embed_files` results; returns its path."""
    ok = [r for r in results if r.clip is not None]
    bad = [r for r in results if r.clip is None]
    width = ok[0].clip.scores.shape[-1] if ok else 0
    arrays = {
        "files": np.asarray([r.file for r in ok], dtype=str),
        "embeddings": np.stack([r.clip.scores for r in ok]).astype(np.float32)
        if ok else np.zeros((0, width), np.float32),
        "duration_s": np.asarray([r.duration for r in ok], np.float64),
        "failed": np.asarray([r.file for r in bad], dtype=str),
        "errors": np.asarray([r.error for r in bad], dtype=str)}
    if tokens:
        windows = [(i, t0, t1, z[1:]) for i, r in enumerate(ok) for t0, t1, z in r.clip.windows]
        arrays["tokens"] = (np.stack([w[3] for w in windows]).astype(np.float32) if windows
                            else np.zeros((0, 0, width), np.float32))
        arrays["token_file"] = np.asarray([w[0] for w in windows], np.int64)
        arrays["token_window_s"] = np.asarray([w[1:3] for w in windows],
                                              np.float64).reshape(-1, 2)
    np.savez(path, **arrays)
    return [str(path)]


def write_parquet(path: str | os.PathLike, results: Sequence[Scored], *, tokens: bool,
                  grid: tuple[int, int], width: int) -> list[str]:
    """The .parquet file and, with `tokens`, its .tokens.parquet (module docstring) of
    `embed_files` results; `grid` (f_dim, t_dim) and `width` (W) are the encoder's, the
    shape of every window's tokens. Returns the paths written."""
    import pyarrow as pa  # lazily: only this output format needs it
    import pyarrow.parquet as pq

    failed = np.array([r.clip is None for r in results], bool)
    values = np.zeros((len(results), width), np.float32)  # a failed file's row is masked
    for i, r in enumerate(results):
        if r.clip is not None:
            values[i] = r.clip.scores
    pq.write_table(pa.table({
        "file": pa.array([r.file for r in results], pa.string()),
        "duration_s": pa.array([r.duration for r in results], pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width,
                                                       mask=pa.array(failed)),
        "error": pa.array([r.error for r in results], pa.string())}), path)
    if not tokens:
        return [str(path)]
    windows = [(r.file, k, t0, t1, z[1:]) for r in results if r.clip is not None
               for k, (t0, t1, z) in enumerate(r.clip.windows)]
    values = np.asarray([w[4] for w in windows], np.float32).reshape(-1)
    # built from its storage (from_numpy_ndarray refuses zero rows: every file failed)
    tensors = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.float32(), [*grid, width]),
        pa.FixedSizeListArray.from_arrays(pa.array(values), grid[0] * grid[1] * width))
    tokens_path = Path(path).with_suffix(".tokens.parquet")
    pq.write_table(pa.table({
        "file": pa.array([w[0] for w in windows], pa.string()),
        "window": pa.array([w[1] for w in windows], pa.int32()),
        "start_s": pa.array([w[2] for w in windows], pa.float64()),
        "end_s": pa.array([w[3] for w in windows], pa.float64()),
        "tokens": tensors}), tokens_path)
    return [str(path), str(tokens_path)]
