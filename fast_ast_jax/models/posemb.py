"""Adapting a learned 2-D positional-embedding grid to another (frequency, time) grid.

AST's rule (docs/REFERENCES.md §3): along each axis, a smaller target takes the centre of the
source grid, a larger one is bilinearly interpolated (torch align_corners=False; for
down-sampling antialias must be off to match torch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _resize_axis(grid, *, axis: int, size: int, method: str):
    """grid: (F, T, W) -> the same with `axis` resized to `size`."""
    n = grid.shape[axis]
    if size == n:
        return grid
    if size < n and method in ("center", "ast"):
        start = n // 2 - size // 2
        return jax.lax.slice_in_dim(grid, start, start + size, axis=axis)
    if size < n and method == "prefix":
        return jax.lax.slice_in_dim(grid, 0, size, axis=axis)
    shape = list(grid.shape)
    shape[axis] = size
    return jax.image.resize(grid, tuple(shape), method="bilinear", antialias=False)


def resize_grid(grid, *, new_shape: tuple[int, int], method: str = "ast"):
    """Adapt a positional-embedding grid.

    Args:
        grid: (F, T, W) grid of embeddings, frequency-major like AST's tokens.
        new_shape: target (F', T').
        method: "ast" (centre cut when smaller, bilinear when larger — AST's initialisation
            rule; time axis first, then frequency, as AST does), "prefix" (keep the first rows
            or columns when smaller — a shorter clip uses the positions of the start of a longer
            one) or "bilinear" (always interpolate).

    Returns:
        (F', T', W) grid.
    """
    if method not in ("ast", "center", "prefix", "bilinear"):
        raise ValueError(f"unknown positional-embedding resize method {method!r}; "
                                          "use 'ast', 'prefix' or 'bilinear'")
    f_new, t_new = new_shape
    grid = _resize_axis(grid, axis=1, size=t_new, method=method)
    return _resize_axis(grid, axis=0, size=f_new, method=method)


def resize_tokens(posemb, *, old_grid: tuple[int, int], new_grid: tuple[int, int],
                                    num_prefix: int, method: str = "ast"):
    """Adapt a flat (1, prefix + F*T, W) embedding (AST layout) to another grid.

    The first `num_prefix` (CLS, DIST) vectors are kept as they are.
    """
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    f, t = old_grid
    expected = num_prefix + f * t
    if posemb.shape[1] != expected:
        raise ValueError(f"positional embedding has {posemb.shape[1]} positions, expected "
                                          f"{num_prefix} + {f}x{t} = {expected}")
    xp = jnp if isinstance(posemb, jax.Array) else np
    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:].reshape(f, t, -1)
    grid = resize_grid(jnp.asarray(grid), new_shape=new_grid, method=method)
    grid = xp.asarray(grid).reshape(1, new_grid[0] * new_grid[1], -1)
    return xp.concatenate([prefix, grid.astype(prefix.dtype)], axis=1)
