"""Multi-head self-attention with an additive bias and a boolean mask.

Every attention in the library goes through `dot_product_attention`, so a backend gets its
best kernel in one place and the model code never changes (attention is the CPU
bottleneck: docs/RESULTS.md, "Where the forward time goes"; cuDNN / splash attention are
the GPU / TPU paths).

Implementations (all give the same result to float32 rounding, fully-masked query rows
included):
    "xla":     einsum + softmax over the materialised (B, H, Tq, Tk) logits. On CPU this is
               memory bound: every elementwise pass over the score matrix costs as much as a
               matmul (docs/RESULTS.md).
    "chunked": a loop over (batch * head, query tile) in which a (tile, Tk) block of scores
               stays in cache; the softmax is normalised after the value product, and the
               backward pass recomputes each tile instead of storing (B, H, Tq, Tk) residuals.
    "cudnn":   `jax.nn.dot_product_attention(implementation="cudnn")`, the fused GPU kernel
               (float16 / bfloat16; bias and mask become one additive bias in that dtype, the
               bias is a constant for autodiff: cuDNN returns a zero bias gradient for
               batch > 1, and every bias here, log token sizes and segment masks, carries no
               parameter gradient anyway).
    "auto":    `choose_implementation`: "chunked" on CPU for long sequences, "cudnn" on GPU
               whenever shapes, dtype, bias and mask allow it, else "xla".
`default_implementation(name)` switches the default for code traced inside it (benchmarks use
it to compare kernels inside a whole model).
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn")
# Score elements per chunked tile: 2**18 float32 = 1 MiB fits in L2 next to the keys / values.
_TILE_ELEMENTS = 2 ** 18
# Below this many score elements per (batch, head) the plain path is as fast and simpler.
_CHUNKED_MIN_ELEMENTS = 2 ** 16

_DEFAULT = contextvars.ContextVar("fast_ast_jax_attention_implementation", default="auto")


@contextlib.contextmanager
def default_implementation(name: str):
    """Within the block, `dot_product_attention` calls without `implementation` use `name`.

    Read at trace time: wrap the first call of a jitted function (its compilation), not later
    calls that hit the cache.
    """
    _check_implementation(name)
    token = _DEFAULT.set(name)
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def _check_implementation(name: str) -> None:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; choose one of "
                         f"{IMPLEMENTATIONS}")


def resolve_implementation(name: str | None, *, q: jax.Array, k: jax.Array,
                           bias: jax.Array | None = None,
                           mask: jax.Array | None = None) -> str:
    """The concrete implementation ("xla", "chunked" or "cudnn") that `name` selects."""
    name = _DEFAULT.get() if name is None else name
    _check_implementation(name)
    if name != "auto":
        return name
    return choose_implementation(
            backend=jax.default_backend(), q_shape=q.shape, k_shape=k.shape,
            dtype=jnp.dtype(q.dtype), bias_shape=None if bias is None else bias.shape,
            mask_shape=None if mask is None else mask.shape)


def choose_implementation(*, backend: str, q_shape: tuple[int, ...],
                          k_shape: tuple[int, ...], dtype: jnp.dtype,
                          bias_shape: tuple[int, ...] | None = None,
                          mask_shape: tuple[int, ...] | None = None) -> str:
    """The "auto" rule, a pure function of the backend name, shapes and dtype.

    Args:
        backend: `jax.default_backend()` ("cpu", "gpu", "tpu").
        q_shape: (B, Tq, H, D); k_shape: (B, Tk, H, D).
        dtype: the compute dtype of q, k, v.
        bias_shape, mask_shape: shapes broadcastable to (B, H, Tq, Tk), or None.

    Returns:
        "chunked" on CPU when a (batch, head) score matrix has at least
        `_CHUNKED_MIN_ELEMENTS` entries; "cudnn" on GPU when `cudnn_supports` says so;
        else "xla".
    """
    tq, tk = q_shape[1], k_shape[1]
    if backend == "cpu":
        return "chunked" if tq * tk >= _CHUNKED_MIN_ELEMENTS else "xla"
    if backend == "gpu" and cudnn_supports(q_shape=q_shape, k_shape=k_shape, dtype=dtype,
                                           bias_shape=bias_shape, mask_shape=mask_shape):
        return "cudnn"
    return "xla"


def cudnn_supports(*, q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype: jnp.dtype,
                   bias_shape: tuple[int, ...] | None = None,
                   mask_shape: tuple[int, ...] | None = None) -> bool:
    """Whether cuDNN's fused attention takes these inputs (JAX 0.10's checks, and what
    `_cudnn_bias_mask` can give it), forward and backward.

    cuDNN needs float16 / bfloat16, a head dim that is a multiple of 8 and <= 128 (256 on
    Hopper; 128 keeps one rule for every GPU), and, when any bias or mask is present in a
    training step, even query and key lengths (odd ones raise NotImplementedError when the
    gradient is traced; the forward cannot know whether one will be). Bias and mask must
    broadcast to (B, H, Tq, Tk); their query and key axes are broadcast to full length here.
    """
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return False
    head_dim = q_shape[-1]
    if head_dim % 8 or head_dim > 128:
        return False
    target = (q_shape[0], q_shape[2], q_shape[1], k_shape[1])
    extras = [s for s in (bias_shape, mask_shape) if s is not None]
    for shape in extras:
        if len(shape) > 4 or any(s not in (1, t) for s, t in zip(
                (1,) * (4 - len(shape)) + tuple(shape), target)):
            return False
    return not extras or (q_shape[1] % 2 == 0 and k_shape[1] % 2 == 0)


def dot_product_attention(
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        implementation: str | None = None,
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
        implementation: "auto", "xla", "chunked" or "cudnn" (see the module docstring);
            None = the current `default_implementation` ("auto" unless changed).

    Returns:
        (B, Tq, H, D) attended values, in q's dtype.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[::2] != k.shape[::2] or (
            q.shape[-1] != k.shape[-1]):
        raise ValueError(f"attention expects q (B, Tq, H, D) and k, v (B, Tk, H, D); got q "
                         f"{q.shape}, k {k.shape}, v {v.shape}")
    impl = resolve_implementation(implementation, q=q, k=k, bias=bias, mask=mask)
    if impl == "cudnn":
        bias, mask = _cudnn_bias_mask(q, k, bias=bias, mask=mask)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                            implementation="cudnn")
    # Scale the (Tq, D) queries, not the (Tq, Tk) logits: one pass fewer over the scores.
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    if impl == "chunked":
        return _chunked_attention(q, k, v, bias=bias, mask=mask)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    # Softmax in float32 whatever the compute dtype: bf16 logits lose the small differences
    # that decide which keys matter.
    probs = jax.nn.softmax(_bias_and_mask(logits, bias=bias, mask=mask), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _bias_and_mask(logits, *, bias, mask):
    """float32 logits + bias, with masked entries at the float32 minimum (finite)."""
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return logits


def _cudnn_bias_mask(q, k, *, bias, mask):
    """Bias and mask in the form cuDNN takes: 4-d with full (Tq, Tk) axes (its layout check
    rejects a (B, 1, 1, Tk) key bias), the bias in q's dtype and constant for autodiff
    (cuDNN's bias gradient is zero for batch > 1; see the module docstring)."""
    b, tq, h, _ = q.shape
    target = (b, h, tq, k.shape[1])

    def full(x, name):
        x = _as_4d(x, name, target)
        return None if x is None else jnp.broadcast_to(x, x.shape[:2] + target[2:])

    bias = full(bias, "bias")
    if bias is not None:
        bias = jax.lax.stop_gradient(bias).astype(q.dtype)
    return bias, full(mask, "mask")


def _as_4d(x: jax.Array | None, name: str, target: tuple[int, int, int, int]):
    """Left-pads x to 4 dims and checks it broadcasts to target (B, H, Tq, Tk)."""
    if x is None:
        return None
    if x.ndim > 4:
        raise ValueError(f"attention {name} has {x.ndim} dims; it must broadcast to "
                         f"(B, H, Tq, Tk) = {target}")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if any(s not in (1, t) for s, t in zip(x.shape, target)):
        raise ValueError(f"attention {name} of shape {x.shape} does not broadcast to "
                         f"(B, H, Tq, Tk) = {target}")
    return x


def _chunked_attention(q, k, v, *, bias, mask):
    """Tiled attention on pre-scaled queries; shapes as in `dot_product_attention`.

    One `lax.map` step handles one (batch, head) pair and one tile of queries against all
    keys: the (tile, Tk) scores stay in cache, and the softmax denominator divides the
    (tile, D) output instead of the scores. `jax.checkpoint` makes the backward pass
    recompute each tile's probabilities rather than keep all (B, H, Tq, Tk) of them.
    """
    b, tq, h, d = q.shape
    tk = k.shape[1]
    target = (b, h, tq, tk)
    bias, mask = _as_4d(bias, "bias", target), _as_4d(mask, "mask", target)
    num_tiles = math.ceil(tq * tk / _TILE_ELEMENTS)
    tile = math.ceil(tq / num_tiles)  # balanced tiles: at most num_tiles - 1 padded rows
    pad = tile * num_tiles - tq
    # (B, T, H, D) -> (B*H, T, D): one contiguous (T, D) block per (batch, head) pair.
    q = jnp.pad(q.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))
    q = q.reshape(b * h * num_tiles, tile, d)
    k = k.transpose(0, 2, 1, 3).reshape(b * h, tk, d)
    v = v.transpose(0, 2, 1, 3).reshape(b * h, tk, d)

    bias, mask = _pad_queries(bias, pad), _pad_queries(mask, pad)

    def rows(x, pair, start):
        """The (tile | 1, Tk) rows of a 4-d bias / mask for one pair and query tile."""
        x = x[pair // h if x.shape[0] > 1 else 0, pair % h if x.shape[1] > 1 else 0]
        return x if x.shape[0] == 1 else jax.lax.dynamic_slice_in_dim(x, start, tile, axis=0)

    @jax.checkpoint
    def step(args):
        index, q_tile = args
        pair, start = index // num_tiles, (index % num_tiles) * tile
        logits = jnp.einsum("qd,kd->qk", q_tile, k[pair], preferred_element_type=jnp.float32)
        logits = _bias_and_mask(
                logits, bias=None if bias is None else rows(bias, pair, start),
                mask=None if mask is None else rows(mask, pair, start))
        # Unnormalised softmax: the max keeps exp finite (1 at the max, so the sum is >= 1
        # and a fully masked row averages all values uniformly, as the "xla" path does).
        probs = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        out = jnp.einsum("qk,kd->qd", probs.astype(v.dtype), v[pair],
                         preferred_element_type=jnp.float32)
        return (out / probs.sum(axis=-1, keepdims=True)).astype(q.dtype)

    out = jax.lax.map(step, (jnp.arange(b * h * num_tiles), q))
    out = out.reshape(b, h, num_tiles * tile, d)[:, :, :tq]
    return out.transpose(0, 2, 1, 3)


def _pad_queries(x, pad):
    """Pads the query axis of a 4-d bias / mask (when it has one) by `pad` rows."""
    if x is None or x.shape[2] == 1 or pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)),
                   constant_values=True if x.dtype == jnp.bool_ else 0)


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
    q_cls = q_cls * jnp.asarray(q_cls.shape[-1] ** -0.5, q_cls.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_cls, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(_bias_and_mask(logits, bias=bias, mask=mask), axis=-1)


class SelfAttention(nn.Module):
    """Fused-qkv multi-head self-attention.

    Parameters: `qkv` kernel (width, 3, heads, head_dim) — one matmul for q, k and v —
    and `out` kernel (heads, head_dim, width). Returns the output and the keys, because
    ToMe matches tokens on the head-averaged keys and TopK recomputes class attention.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, bias=None, mask=None, num_queries: int | None = None):
        """x: (B, T, W) -> (out (B, Q, W), q (B, Q, H, D), k (B, T, H, D)).

        num_queries: only the first Q tokens query (Q = T when None): the other tokens still
            serve as keys and values, but their outputs are not computed.
        """
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        qkv = nn.DenseGeneral(
                features=(3, self.num_heads, head_dim), dtype=self.dtype, name="qkv"
        )(x)
        q, k, v = qkv[:, :num_queries, 0], qkv[:, :, 1], qkv[:, :, 2]
        if num_queries is not None and mask is not None:
            mask = mask[..., :num_queries, :] if mask.shape[-2] > 1 else mask
        if num_queries is not None and bias is not None:
            bias = bias[..., :num_queries, :] if bias.shape[-2] > 1 else bias
        out = dot_product_attention(q, k, v, bias=bias, mask=mask)
        out = nn.DenseGeneral(features=width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
        return out, q, k
