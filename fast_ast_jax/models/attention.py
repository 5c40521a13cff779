"""Multi-head self-attention with an additive bias and a boolean mask.

Every attention in the library goes through `dot_product_attention`, so a backend gets its
best kernel in one place and the model code never changes (PERF.md: attention is the CPU
bottleneck; cuDNN / splash attention are the GPU / TPU paths).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def dot_product_attention(
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention, scaled by head_dim ** -0.5.

    Args:
        q: (B, Tq, H, D) queries.
        k: (B, Tk, H, D) keys.
        v: (B, Tk, H, D) values.
        bias: additive logits bias broadcastable to (B, H, Tq, Tk), e.g. log(size) per key
            for ToMe's proportional attention, shaped (B, 1, 1, Tk).
        mask: boolean, broadcastable to (B, H, Tq, Tk); False removes the key for that query.
            A query with no valid key gets a uniform average (finite, never NaN); its output
            is meaningless and must be masked downstream.

    Returns:
        (B, Tq, H, D) attended values, in q's dtype.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    # Softmax in float32 whatever the compute dtype: bf16 logits lose the small differences
    # that decide which keys matter.
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def class_attention(
        q_cls: jax.Array,
        k: jax.Array,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
) -> jax.Array:
    """Attention probabilities of a few query tokens (class tokens) over all keys.

    Recomputes only the (B, H, Q, Tk) rows that TopK pruning needs, so the main attention
    never has to return its full (B, H, T, T) probability matrix.

    Args:
        q_cls: (B, Q, H, D) queries of the class token(s).
        k: (B, Tk, H, D) keys.
        bias, mask: as in `dot_product_attention`, broadcastable to (B, H, Q, Tk).

    Returns:
        (B, H, Q, Tk) float32 probabilities.
    """
    scale = q_cls.shape[-1] ** -0.5
    logits = (jnp.einsum("bqhd,bkhd->bhqk", q_cls, k) * scale).astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


class SelfAttention(nn.Module):
    """Fused-qkv multi-head self-attention.

    Parameters: `qkv` kernel (width, 3, heads, head_dim) — one matmul for q, k and v —
    and `out` kernel (heads, head_dim, width). Returns the output and the keys, because
    ToMe matches tokens on the head-averaged keys and TopK recomputes class attention.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, bias=None, mask=None):
        """x: (B, T, W) -> (out (B, T, W), q (B, T, H, D), k (B, T, H, D))."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        qkv = nn.DenseGeneral(
                features=(3, self.num_heads, head_dim), dtype=self.dtype, name="qkv"
        )(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = dot_product_attention(q, k, v, bias=bias, mask=mask)
        out = nn.DenseGeneral(features=width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
        return out, q, k
