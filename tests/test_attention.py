"""Attention implementations agree (values and gradients), with bias, mask and tiling."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models import attention
from fast_ast_jax.models.attention import (
    SelfAttention, class_attention, default_implementation, dot_product_attention,
    resolve_implementation)

B, TQ, TK, H, D = 2, 37, 41, 3, 8


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    # 200 score elements per tile -> several query tiles (and padding) even at toy sizes.
    monkeypatch.setattr(attention, "_TILE_ELEMENTS", 200)


def _inputs(tq=TQ, tk=TK, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, tq, H, D), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((B, tk, H, D), dtype=np.float32))
    v = jnp.asarray(rng.standard_normal((B, tk, H, D), dtype=np.float32))
    return q, k, v, rng


def _reference(q, k, v, bias, mask):
    """Plain numpy softmax attention (float64); fully masked rows average uniformly."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -1e30)
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def _bias_mask(rng, kind):
    bias = mask = None
    if kind in ("bias", "both"):
        bias = jnp.asarray(np.log(rng.integers(1, 5, (B, 1, 1, TK))).astype(np.float32))
    if kind in ("query_bias",):
        bias = jnp.asarray(rng.standard_normal((B, H, TQ, TK), dtype=np.float32))
    if kind in ("mask", "both"):
        m = rng.random((B, 1, TQ, TK)) > 0.4
        m[0, 0, 3] = False  # a fully masked query row
        m[1, 0, :, 7:] = False  # padding keys
        mask = jnp.asarray(m)
    return bias, mask


@pytest.mark.parametrize("kind", ["none", "bias", "query_bias", "mask", "both"])
def test_implementations_agree_with_reference(kind):
    q, k, v, rng = _inputs()
    bias, mask = _bias_mask(rng, kind)
    want = _reference(q, k, v, bias, mask)
    for impl in ("xla", "chunked", "auto"):
        got = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
        chex.assert_shape(got, (B, TQ, H, D))
        assert np.isfinite(np.asarray(got)).all(), impl
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5, err_msg=impl)


def test_fully_masked_rows_are_finite_and_agree():
    q, k, v, _ = _inputs()
    mask = jnp.zeros((B, 1, TQ, TK), bool)
    outs = [dot_product_attention(q, k, v, mask=mask, implementation=impl)
            for impl in ("xla", "chunked")]
    for out in outs:
        assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), atol=1e-5)


def test_gradients_agree():
    q, k, v, rng = _inputs(seed=1)
    bias, mask = _bias_mask(rng, "both")
    w = jnp.asarray(rng.standard_normal((B, TQ, H, D), dtype=np.float32))

    def loss(q, k, v, bias, impl):
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
        return (out * w).sum()

    grads = {impl: jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)(
        q, k, v, bias, impl) for impl in ("xla", "chunked")}
    for a, b in zip(grads["xla"], grads["chunked"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_auto_choice_and_default_context():
    q, k, v, _ = _inputs()
    assert resolve_implementation("auto", q=q[:, :2], k=k[:, :2]) == "xla"
    big = jnp.zeros((1, 512, 1, 8))
    if jax.default_backend() == "cpu":
        assert resolve_implementation("auto", q=big, k=big) == "chunked"
    with default_implementation("chunked"):
        assert resolve_implementation(None, q=q, k=k) == "chunked"
    assert resolve_implementation(None, q=q, k=k) in ("xla", "chunked", "cudnn")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        dot_product_attention(q, k, v, implementation="flash")


def test_bad_shapes_raise_clear_errors():
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="does not broadcast"):
        dot_product_attention(q, k, v, bias=jnp.zeros((B, 1, 1, TK + 1)),
                              implementation="chunked")
    with pytest.raises(ValueError, match="attention expects"):
        dot_product_attention(q, k[:, :, :2], v, implementation="xla")


def test_class_attention_matches_full_rows():
    q, k, v, rng = _inputs(tq=TK, tk=TK)
    bias = jnp.asarray(np.log(rng.integers(1, 5, (B, 1, 1, TK))).astype(np.float32))
    probs = class_attention(q[:, :2], k, bias=bias)
    chex.assert_shape(probs, (B, H, 2, TK))
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-6)
    # Probabilities @ v reproduce the first two rows of the full attention output.
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    full = dot_product_attention(q, k, v, bias=bias, implementation="chunked")
    np.testing.assert_allclose(np.asarray(out), np.asarray(full[:, :2]), atol=1e-5)


def test_self_attention_param_shapes_and_implementations():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 30, 12), dtype=np.float32))
    module = SelfAttention(num_heads=3)
    params = module.init(jax.random.key(0), x)["params"]
    chex.assert_shape(params["qkv"]["kernel"], (12, 3, 3, 4))
    chex.assert_shape(params["out"]["kernel"], (3, 4, 12))
    outs = []
    for impl in ("xla", "chunked"):
        with default_implementation(impl):
            outs.append(module.apply({"params": params}, x)[0])
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), atol=1e-5)


BF16 = jnp.dtype(jnp.bfloat16)


@pytest.mark.parametrize("kwargs, want", [
    # CPU: the tiled path from 2**16 score elements per (batch, head).
    (dict(backend="cpu", q_shape=(2, 256, 3, 64), k_shape=(2, 256, 3, 64),
          dtype=BF16), "chunked"),
    (dict(backend="cpu", q_shape=(2, 100, 3, 64), k_shape=(2, 100, 3, 64),
          dtype=BF16), "xla"),
    # GPU, bf16: plain, ToMe key bias, packed segment mask, both, class-slot queries.
    (dict(backend="gpu", q_shape=(2, 1214, 12, 64), k_shape=(2, 1214, 12, 64),
          dtype=BF16), "cudnn"),
    (dict(backend="gpu", q_shape=(2, 1120, 12, 64), k_shape=(2, 1120, 12, 64), dtype=BF16,
          bias_shape=(2, 1, 1, 1120)), "cudnn"),
    (dict(backend="gpu", q_shape=(4, 256, 3, 64), k_shape=(4, 256, 3, 64), dtype=BF16,
          mask_shape=(4, 1, 256, 256)), "cudnn"),
    (dict(backend="gpu", q_shape=(4, 256, 3, 64), k_shape=(4, 256, 3, 64),
          dtype=jnp.dtype(jnp.float16), bias_shape=(4, 1, 1, 256),
          mask_shape=(4, 1, 256, 256)), "cudnn"),
    (dict(backend="gpu", q_shape=(4, 8, 3, 64), k_shape=(4, 256, 3, 64), dtype=BF16,
          mask_shape=(4, 1, 8, 256)), "cudnn"),
    # GPU fallbacks: float32, odd lengths with a bias / mask, head dims cuDNN rejects,
    # a bias that does not broadcast, other backends.
    (dict(backend="gpu", q_shape=(2, 1214, 12, 64), k_shape=(2, 1214, 12, 64),
          dtype=jnp.dtype(jnp.float32)), "xla"),
    (dict(backend="gpu", q_shape=(2, 1213, 12, 64), k_shape=(2, 1213, 12, 64), dtype=BF16,
          bias_shape=(2, 1, 1, 1213)), "xla"),
    (dict(backend="gpu", q_shape=(2, 1213, 12, 64), k_shape=(2, 1213, 12, 64),
          dtype=BF16), "cudnn"),
    (dict(backend="gpu", q_shape=(2, 64, 3, 12), k_shape=(2, 64, 3, 12), dtype=BF16), "xla"),
    (dict(backend="gpu", q_shape=(2, 64, 1, 192), k_shape=(2, 64, 1, 192), dtype=BF16),
     "xla"),
    (dict(backend="gpu", q_shape=(2, 64, 3, 64), k_shape=(2, 64, 3, 64), dtype=BF16,
          bias_shape=(3, 1, 1, 64)), "xla"),
    (dict(backend="tpu", q_shape=(2, 64, 3, 64), k_shape=(2, 64, 3, 64), dtype=BF16), "xla"),
])
def test_choose_implementation_rule(kwargs, want):
    assert attention.choose_implementation(**kwargs) == want


def test_cudnn_inputs_pass_jax_layout_check_and_keep_values():
    """What the "cudnn" path hands to jax.nn.dot_product_attention: JAX's own cuDNN layout
    check accepts it (a (B, 1, 1, Tk) bias would be rejected), and the same arguments on
    JAX's XLA path give our attention (bf16 rounding of q, k, v and the bias)."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_checks

    q, k, v, rng = _inputs(tq=TK, tk=TK)
    bias = jnp.asarray(np.log(rng.integers(1, 5, (B, 1, 1, TK))).astype(np.float32))
    seg = jnp.asarray(rng.integers(0, 3, (B, TK)))
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]
    q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
    cb, cm = attention._cudnn_bias_mask(q, k, bias=bias, mask=mask)
    assert cb.shape == (B, 1, TK, TK) and cb.dtype == jnp.bfloat16 and cm.shape == mask.shape
    combined = cudnn_checks.combine_bias_and_mask(cb, cm, q.dtype)
    cudnn_checks.check_layout(q, k, v, combined, None, None, None, None, None, None,
                              cudnn_checks.AttentionLayout.BTNH)
    got = jax.nn.dot_product_attention(q, k, v, bias=cb, mask=cm, implementation="xla")
    want = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=3e-2)
    # The bias is a constant for autodiff on this path (cuDNN's dbias is 0 for batch > 1).
    grad = jax.grad(lambda b: attention._cudnn_bias_mask(q, k, bias=b, mask=None)[0].astype(
            jnp.float32).sum())(bias)
    assert not np.asarray(grad).any()
