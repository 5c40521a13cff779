"""TopK token pruning by class-token attention (EViT / Lee & Lee 2025), static shapes.

Semantics of the TopK pruning paper (arXiv 2504.01690) and EViT (arXiv 2202.07800),
docs/REFERENCES.md §5: at chosen blocks, between the
attention residual and the MLP, keep the ceil(keep_rate * N) patch tokens with the highest
class-token attention (post-softmax, averaged over heads), ordered by descending score,
with the class tokens re-attached in front. Optionally (EViT) the dropped tokens are fused
into one extra token, their attention-weighted average, appended after the kept ones.
The kept count is a Python int fixed at trace time.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fast_ast_jax.models.attention import class_attention

SCORES = ("cls", "cls_dist")


def num_kept(num_patches: int, keep_rate: float) -> int:
    """Patch tokens kept out of num_patches: ceil(keep_rate * num_patches) (reference)."""
    check_keep_rate(keep_rate)
    return math.ceil(keep_rate * num_patches)


def check_keep_rate(keep_rate: float) -> None:
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"prune keep_rate must lie in (0, 1], got {keep_rate}")


def class_token_scores(
        q: jax.Array,
        k: jax.Array,
        *,
        num_prefix: int,
        score: str = "cls",
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
) -> jax.Array:
    """Importance of every patch token: class attention averaged over heads.

    Args:
        q, k: (B, T, H, D) queries and keys of the block's attention.
        num_prefix: class tokens in front (1 = CLS, 2 = CLS + DIST).
        score: "cls" (CLS query row, the reference) or "cls_dist" (mean of both rows).
        bias, mask: the block attention's bias / mask, broadcastable to (B, H, Q, T).

    Returns:
        (B, T - num_prefix) float32 post-softmax scores of the patch keys.
    """
    if score not in SCORES:
        raise ValueError(f"prune score {score!r} is not one of {SCORES}")
    rows = 2 if score == "cls_dist" else 1
    if rows > num_prefix:
        raise ValueError("prune score 'cls_dist' needs a DIST token (dist_token=True)")
    probs = class_attention(q[:, :rows], k, bias=bias, mask=mask)  # (B, H, rows, T)
    return probs.mean(axis=(1, 2))[:, num_prefix:]


def topk_prune(
        x: jax.Array,
        scores: jax.Array,
        *,
        num_keep: int,
        num_prefix: int,
        fuse: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Keep the num_keep highest-scoring patch tokens (descending score order).

    Args:
        x: (B, T, D) tokens, class tokens first.
        scores: (B, T - num_prefix) patch importance (no gradient flows into the choice).
        num_keep: static number of patch tokens kept.
        num_prefix: class tokens kept in front.
        fuse: append one token, the score-weighted average of the dropped patch tokens.

    Returns:
        (x (B, num_prefix + num_keep [+1], D), kept (B, num_keep) int32 indices into the
        patch tokens of the input).
    """
    num_patches = x.shape[1] - num_prefix
    if not 0 < num_keep <= num_patches:
        raise ValueError(f"cannot keep {num_keep} of {num_patches} patch tokens")
    _, kept = jax.lax.top_k(jax.lax.stop_gradient(scores), num_keep)
    fused = None
    if fuse:
        weights = jnp.where(dropped_mask(kept, num_patches), scores, 0.0)
        fused = fuse_dropped(x[:, num_prefix:], weights)
    return gather_tokens(x, kept, num_prefix=num_prefix, fused=fused), kept


def dropped_mask(kept: jax.Array, num_patches: int) -> jax.Array:
    """(B, k) kept indices -> (B, num_patches) bool, True for the dropped patches."""
    batch = jnp.arange(kept.shape[0])[:, None]
    return jnp.ones((kept.shape[0], num_patches), bool).at[batch, kept].set(False)


def fuse_dropped(patches: jax.Array, weights: jax.Array) -> jax.Array:
    """EViT fusion: (B, N, D) patches, (B, N) weights (0 on kept) -> (B, D) weighted mean.

    Accumulates in float32; all-zero weights (nothing dropped) give zero, never NaN.
    """
    weights = weights.astype(jnp.float32)
    total = jnp.einsum("bn,bnd->bd", weights, patches.astype(jnp.float32))
    norm = jnp.maximum(weights.sum(axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return (total / norm).astype(patches.dtype)


def gather_tokens(values: jax.Array, kept: jax.Array, *, num_prefix: int,
                  fused: jax.Array | None = None) -> jax.Array:
    """Apply a pruning to per-token values (sizes, sources): (B, T, ...) -> kept rows.

    Args:
        values: (B, T, ...) per-token values, class tokens first.
        kept: (B, k) indices into the patch tokens.
        num_prefix: class tokens.
        fused: (B, ...) the value of the fused token, appended when given.
    """
    patches = values[:, num_prefix:]
    idx = kept.reshape(kept.shape + (1,) * (values.ndim - 2))
    out = [values[:, :num_prefix], jnp.take_along_axis(patches, idx, axis=1)]
    if fused is not None:
        out.append(fused[:, None])
    return jnp.concatenate(out, axis=1)
