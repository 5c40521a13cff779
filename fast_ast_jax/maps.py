"""Token-reduction maps of a checkpoint on one clip (`predict --maps`, `evaluate.py --maps`).

The model runs once with `trace_source=True` on the clip's first window (a padded model's
training input; an ElasticAST's clip at its own length, alone in one row), and the PNGs of
fast_ast_jax.viz are written over that window's spectrogram:

    <name>_merge.png  every patch in the colour of the token that holds it at the end
                      (ToMe merge groups; black: pruned), always;
    <name>_kept.png   patches still held by some token (orange) and pruned ones (dark),
                      when TopK pruning is on (prune_keep_rate < 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from fast_ast_jax import models, packing, viz
from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.features import features
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import AST
from fast_ast_jax.patches import patch_shape
from fast_ast_jax.windows import elastic_row


def _source(bundle: Bundle, wave: np.ndarray, overrides: dict[str, Any]
            ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], Any]:
    """(spectrogram (T, bins), source (tokens, patches) 0/1, grid, model) of the first
    window of `wave` (mono, at the front-end's rate)."""
    model = bundle.model.clone(trace_source=True, **overrides)
    if isinstance(model, AST):
        x = features(wave, frontend=bundle.frontend)
        _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False,
                                                    mutable=["intermediates"]))(
            bundle.params, x[None])
        source = np.asarray(state["intermediates"]["source"][0][0])
        return x, source[:, model.num_prefix:], model.grid(), model
    if models.is_packed(model):
        tokens, fe = elastic_row(model, bundle)  # the packed row, its hop and window
        n = num_frames(len(wave), window_size=fe.window_size, hop_size=fe.hop_size)
        x = features(wave, frontend=fe)[:max(min(n, fe.target_frames),
                                             patch_shape(model.patch_size)[1])]
        sample = packing.patchify(x, patch_size=model.patch_size, fstride=model.fstride,
                                  tstride=model.tstride)
        f_dim = int(sample[1][:, 0].max()) + 1
        row = packing.pack([sample], rows=1, max_tokens=tokens, max_slots=1)
        _, _, source = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(
            bundle.params, row.arrays())
        n_patches = len(sample[0])
        return x, np.asarray(source[0])[:, :n_patches], (f_dim, n_patches // f_dim), model
    raise ValueError(f"token-reduction maps need an AST or ElasticAST; this checkpoint "
                     f"holds a {type(model).__name__}")


def write_maps(bundle: Bundle, wave: np.ndarray, *, directory: str | Path, name: str,
               **overrides: Any) -> list[Path]:
    """Write the maps of one clip (see the module docstring); returns their paths.

    Args:
        bundle: a loaded checkpoint (AST or ElasticAST).
        wave: (samples,) mono float32 at bundle.frontend.sample_rate.
        directory: output folder (created).
        name: file name stem.
        **overrides: model fields for the maps (tome_r=8, prune_keep_rate=0.5, ...);
            default: the checkpoint's own settings.
    """
    x, source, grid, model = _source(bundle, np.asarray(wave, np.float32), overrides)
    directory = Path(directory)
    size = (min(1024, max(256, 8 * x.shape[0])), 256)
    paths = [viz.merge_map_png(x, source, grid=grid, path=directory / f"{name}_merge.png",
                               size=size)]
    if model.prune_keep_rate < 1.0:
        kept = np.flatnonzero(source.max(axis=0) > 0)
        paths.append(viz.prune_map_png(x, kept, grid=grid, path=directory / f"{name}_kept.png",
                                       size=size))
    return paths
