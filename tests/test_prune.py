"""TopK pruning: counts, scores, ordering, EViT fusion."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models import create_ast, prune


@pytest.mark.parametrize("rate, want", [
    (0.7, [359, 252, 177]), (0.5, [256, 128, 64]), (0.8, [410, 328, 263]),
    (0.9, [461, 415, 374]),
])
def test_counts_for_512_patches(rate, want):
    # 128 bins x 1024 frames at stride 16: 8 x 64 = 512 patches (+ CLS, DIST).
    def counts(**kw):
        plan = create_ast("tiny", fstride=16, tstride=16, prune_layers=(3, 6, 9),
                          **kw).token_plan()
        return [lp.tokens_out - 2 for lp in plan]

    got = counts(prune_keep_rate=rate)
    assert [got[i] for i in (3, 6, 9)] == want
    assert got[:3] == [512] * 3 and got[-1] == want[-1]
    fused = counts(prune_keep_rate=0.5, prune_fuse=True)
    assert [fused[i] for i in (3, 6, 9)] == [257, 130, 66]


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01])
def test_bad_keep_rate(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        prune.num_kept(10, rate)


def test_topk_order_and_prefix():
    x = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)
    scores = jnp.asarray([[0.1, 0.5, 0.2, 0.05, 0.15], [0.3, 0.1, 0.25, 0.2, 0.15]])
    out, kept = prune.topk_prune(x, scores, num_keep=3, num_prefix=2)
    np.testing.assert_array_equal(kept, [[1, 2, 4], [0, 2, 3]])
    np.testing.assert_array_equal(out[:, :2], x[:, :2])
    np.testing.assert_array_equal(out[0, 2:], x[0, [3, 4, 6]])
    np.testing.assert_array_equal(out[1, 2:], x[1, [2, 4, 5]])
    with pytest.raises(ValueError, match="cannot keep"):
        prune.topk_prune(x, scores, num_keep=6, num_prefix=2)


@pytest.mark.slow
def test_fusion_is_score_weighted_mean_of_dropped():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 4))
    scores = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (2, 8)))
    out, kept = prune.topk_prune(x, scores, num_keep=5, num_prefix=1, fuse=True)
    chex.assert_shape(out, (2, 7, 4))
    s, xp = np.asarray(scores), np.asarray(x)[:, 1:]
    for b in range(2):
        dropped = sorted(set(range(8)) - set(np.asarray(kept[b]).tolist()))
        w = s[b, dropped]
        want = (w[:, None] * xp[b, dropped]).sum(0) / w.sum()
        np.testing.assert_allclose(out[b, -1], want, rtol=1e-5, atol=1e-6)
    # Nothing dropped: the fused token is zero, never NaN.
    out, _ = prune.topk_prune(x, scores, num_keep=8, num_prefix=1, fuse=True)
    np.testing.assert_array_equal(out[:, -1], 0)


@pytest.mark.slow
def test_class_token_scores_match_full_attention():
    kq, kk, kb = jax.random.split(jax.random.PRNGKey(2), 3)
    q = jax.random.normal(kq, (2, 12, 3, 8))
    k = jax.random.normal(kk, (2, 12, 3, 8))
    bias = jnp.log(jax.random.uniform(kb, (2, 1, 1, 12), minval=1, maxval=4))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    got = prune.class_token_scores(q, k, num_prefix=2, bias=bias)
    np.testing.assert_allclose(got, probs[:, :, 0, 2:].mean(1), rtol=1e-5, atol=1e-7)
    got = prune.class_token_scores(q, k, num_prefix=2, score="cls_dist", bias=bias)
    np.testing.assert_allclose(got, probs[:, :, :2, 2:].mean((1, 2)), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="DIST"):
        prune.class_token_scores(q, k, num_prefix=1, score="cls_dist")
    with pytest.raises(ValueError, match="score"):
        prune.class_token_scores(q, k, num_prefix=1, score="mean")


def test_gather_tokens():
    values = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1)
    kept = jnp.asarray([[3, 0], [1, 2]])
    got = prune.gather_tokens(values, kept, num_prefix=1, fused=jnp.full((2, 1), -1.0))
    np.testing.assert_array_equal(got[..., 0], [[0, 4, 1, -1], [6, 8, 9, -1]])


@pytest.mark.slow
def test_prune_grad_finite():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 10, 4))
    scores = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(4), (2, 8)))

    def loss(x, scores):
        out, _ = prune.topk_prune(x, scores, num_keep=4, num_prefix=2, fuse=True)
        return jnp.sum(out ** 2)

    gx, gs = jax.grad(loss, argnums=(0, 1))(x, scores)
    chex.assert_tree_all_finite((gx, gs))
    assert float(jnp.abs(gs).sum()) > 0  # the fused token is trained through the scores
