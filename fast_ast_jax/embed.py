"""Embeddings of many audio files from an AST or a masked-pretraining (mae) checkpoint.

    python -m fast_ast_jax.embed clip.wav recordings/ "more/*.flac" --checkpoint WORKDIR
        --out embeddings.npz|embeddings.parquet [--tokens] [--list files.txt]
        [--batch_size 8] [--hop_frames N] [--debug]

Inputs, decoding and bad files as in `python -m fast_ast_jax.predict` (the same file
expansion, decoding threads and one `error:` line per unreadable file; exit status 1 when
any failed). The encoder runs on every patch (no masking, no token reduction, whatever the
checkpoint's ToMe / TopK settings), after the final LayerNorm:

    clip embedding (W,): the mean of the class tokens (CLS, DIST) - an AST's pooled
        features before its head (`AST.pool`), `MAE.encode`'s clip embedding - averaged
        over the clip's windows (a clip longer than the trained input is cut into windows
        of that length every --hop_frames frames, as predict does);
    --tokens: each window's patch tokens (f_dim * t_dim, W), frequency-major.

The same function of a waveform, as one serialised program for a server:
`python -m fast_ast_jax.export --embed [--tokens]` (one window: the exported input length).

--out x.npz (NumPy arrays):
    files (F,) str, embeddings (F, W) float32, duration_s (F,): the files embedded, in
        input order;
    failed (E,) str, errors (E,) str: the files that could not be read and why;
    with --tokens: tokens (K, N, W) float32 over all K windows, token_file (K,) int (the
        row of `files`), token_window_s (K, 2) (start, end seconds).
--out x.parquet (Apache Parquet, written with pyarrow; pandas, polars, DuckDB read it):
    one row per input file, in input order, failed ones included: file (string),
    duration_s (float64), embedding (fixed_size_list<float32>[W]), error (string); a failed
    file has a null duration_s and embedding and its reason in error (null when it worked).
    With --tokens also x.tokens.parquet, one row per window: file (string, as in x.parquet),
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

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from fast_ast_jax import checkpoints, cli
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import AST, mae
from fast_ast_jax.models.ast import field_names
from fast_ast_jax.predict import Scored, file_arguments, input_files, score_files
from fast_ast_jax.windows import Scorer, window_scorer


def encoder(bundle: Bundle, *, where: str) -> tuple[mae.Encoder, dict]:
    """The AST encoder (no head, no masking) of an AST or mae checkpoint and its params;
    another model kind is a one-line ValueError naming `where`."""
    model, params = bundle.model, bundle.params
    if isinstance(model, mae.MAE):
        return mae.Encoder(**model.backbone_fields()), mae.encoder_params(params)
    if isinstance(model, AST):
        fields = {k: getattr(model, k) for k in field_names(mae.Encoder)}
        return mae.Encoder(**fields), {k: v for k, v in params.items()
                                       if k not in ("head_norm", "head")}
    raise ValueError(f"{where} holds a {type(model).__name__}: embed takes an AST or a "
                     "masked-pretraining (mae) checkpoint")


def embedding(bundle: Bundle, *, where: str) -> tuple[Callable, dict]:
    """(apply, params): apply(params, x (B, T, bins) features) -> (clip embedding (B, W),
    patch tokens (B, N, W)) float32 of the checkpoint's encoder; what embed and export
    --embed compute."""
    enc, params = encoder(bundle, where=where)
    prefix = enc.num_prefix

    def apply(p, x):
        out = enc.apply({"params": p}, x).astype(jnp.float32)  # (B, prefix + N, W)
        return out[:, :prefix].mean(axis=1), out[:, prefix:]

    return apply, params


def embedder(bundle: Bundle, *, where: str, tokens: bool = False, batch_size: int = 8,
             on_device: bool | None = None) -> Scorer:
    """A windows.Scorer whose per-window output is the clip embedding (W,) or, with
    `tokens`, the clip embedding followed by the patch tokens (1 + N, W); a clip's output
    is the mean over its windows (of the embedding; the tokens stay per window)."""
    apply, params = embedding(bundle, where=where)

    def run(p, x, frames):  # padded frames are embedded as in training: `frames` unused
        clip, patches = apply(p, x)
        return jnp.concatenate([clip[:, None], patches], 1) if tokens else clip

    return window_scorer(run, params=params, frontend=bundle.frontend,
                         batch_size=batch_size, on_device=on_device,
                         aggregate=lambda z: ((z[:, 0] if tokens else z).mean(axis=0), z))


def embed_files(files: Sequence[str], *, checkpoint, tokens: bool = False,
                batch_size: int = 8, hop_frames: int | None = None, workers: int = 4,
                debug: bool = False, on_device: bool | None = None) -> Iterator[Scored]:
    """predict.Scored per file, in order, lazily: clip.scores the clip embedding (W,),
    clip.windows (start_s, end_s, window output) - the window's embedding, or with
    `tokens` its (1 + N, W) embedding and patch tokens; or the file's error."""
    bundle = (checkpoint if isinstance(checkpoint, Bundle)
              else checkpoints.load(checkpoint))
    sc = embedder(bundle, where=str(checkpoint), tokens=tokens, batch_size=batch_size,
                  on_device=on_device)
    yield from score_files(files, scorer=sc, hop_frames=hop_frames, workers=workers,
                           debug=debug)


def write_npz(path: str | Path, results: Sequence[Scored], *, tokens: bool) -> list[str]:
    """The --out .npz file (module docstring) of `embed_files` results; returns its path."""
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


def write_parquet(path: str | Path, results: Sequence[Scored], *, tokens: bool,
                  grid: tuple[int, int], width: int) -> list[str]:
    """The --out .parquet file and, with `tokens`, its .tokens.parquet (module docstring) of
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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0; 1 when a file failed; 2 usage)."""
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.embed",
                                     description=__doc__.splitlines()[0])
    file_arguments(parser, checkpoint_help="training workdir or checkpoints/ of an AST or "
                   "mae run")
    parser.add_argument("--out", required=True,
                        help="the .npz or .parquet file to write (formats: see above)")
    parser.add_argument("--tokens", action="store_true",
                        help="also write every window's per-patch tokens")
    args = parser.parse_args(argv)
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".npz", ".parquet"):
        cli.fail(f"--out {args.out}: use a .npz or .parquet file name")
    files = input_files(args)
    with cli.user_errors(debug=args.debug):
        bundle = checkpoints.load(args.checkpoint)
        encoder(bundle, where=args.checkpoint)  # an unsupported kind fails before decoding
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # as export does: not after the work
    results, failed = [], 0
    progress = tqdm(total=len(files), unit="file", disable=len(files) < 20 or None,
                    file=sys.stderr)
    try:
        for r in embed_files(files, checkpoint=bundle, tokens=args.tokens,
                             batch_size=args.batch_size, hop_frames=args.hop_frames,
                             workers=args.workers, debug=args.debug):
            progress.update()
            results.append(r)
            if r.error is not None:
                failed += 1
                progress.write(f"error: {r.error}", file=sys.stderr)
    finally:
        progress.close()
    if suffix == ".npz":
        written = write_npz(args.out, results, tokens=args.tokens)
    else:
        written = write_parquet(args.out, results, tokens=args.tokens,
                                grid=bundle.model.grid(), width=bundle.model.width)
    print(f"{len(results) - failed} embeddings -> {' + '.join(written)}")
    if failed:
        print(f"{failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
