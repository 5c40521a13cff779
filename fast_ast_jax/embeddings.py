"""Embeddings of audio from an AST or a masked-pretraining (mae) checkpoint.

    >>> from fast_ast_jax.embeddings import embed_files
    >>> for r in embed_files(["a.wav"], checkpoint="workdirs/fsdd_pretrain"):
    ...     r.clip.scores  # (W,) the clip embedding, or r.error

The encoder runs on every patch (no masking, no token reduction, whatever the checkpoint's
ToMe / TopK settings), after the final LayerNorm:

    clip embedding (W,): the mean of the class tokens (CLS, DIST) - an AST's pooled
        features before its head (`AST.pool`), `MAE.encode`'s clip embedding - averaged
        over the clip's windows (a clip longer than the trained input is cut into windows
        of that length every `hop_frames` frames, as predictions are);
    tokens: each window's patch tokens (f_dim * t_dim, W), frequency-major.

Files are decoded and scored by the file engine of fast_ast_jax.inference (threads,
batched windows, one `error` per unreadable file). `embedding` is the one function of a
window's features that `python -m fast_ast_jax.embed` and `python -m fast_ast_jax.export
--embed` compute; fast_ast_jax.result_files writes the results (.npz, .parquet).
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import jax.numpy as jnp

from fast_ast_jax import checkpoints
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.inference import Scored, score_files
from fast_ast_jax.models import AST, mae
from fast_ast_jax.models.ast import field_names
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


def embed_files(files: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike | Bundle,
                tokens: bool = False, batch_size: int = 8, hop_frames: int | None = None,
                workers: int = 4, debug: bool = False, on_device: bool | None = None
                ) -> Iterator[Scored]:
    """inference.Scored per file, in order, lazily: clip.scores the clip embedding (W,),
    clip.windows (start_s, end_s, window output) - the window's embedding, or with
    `tokens` its (1 + N, W) embedding and patch tokens; or the file's error.

    Args:
        files: audio paths.
        checkpoint: training workdir or checkpoints dir of an AST or mae run, or a loaded
            Bundle.
        tokens: keep each window's patch tokens too.
        batch_size, hop_frames, workers, debug, on_device: as `inference.predict_files`.
    """
    loaded = isinstance(checkpoint, Bundle)
    bundle = checkpoint if loaded else checkpoints.load(checkpoint)
    sc = embedder(bundle, where="the checkpoint" if loaded else str(checkpoint),
                  tokens=tokens, batch_size=batch_size, on_device=on_device)
    yield from score_files(files, scorer=sc, hop_frames=hop_frames, workers=workers,
                           debug=debug)
