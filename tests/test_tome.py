"""ToMe bipartite soft matching: hand-computed cases, a NumPy reference, invariants."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models import tome


def _unit(degrees):
    """(1, T, 2) unit vectors at the given angles: cosine similarity = cos(angle gap)."""
    rad = np.deg2rad(np.asarray(degrees, np.float64))
    return jnp.asarray(np.stack([np.cos(rad), np.sin(rad)], -1)[None], jnp.float32)


def _rows(merged):
    """Merged one-hot rows -> list of sorted original-token groups, in output order."""
    return [sorted(np.flatnonzero(np.asarray(row)).tolist()) for row in merged[0]]


EYE6 = jnp.eye(6)[None]


def test_class_token_order_and_protection():
    # A = {0, 2, 4}, B = {1, 3, 5}. Best partners: 0 -> 5 (0.5 deg), 4 -> 3 (1 deg),
    # 2 -> 5 (5 deg).
    metric = _unit([120.5, 0, 115, 60, 59, 120])
    # Without a class token token 0 is an ordinary token: it merges first, and the unmerged
    # A tokens stay in descending-score order (4 before 2).
    merge = tome.bipartite_soft_matching(metric, r=1)
    assert _rows(merge(EYE6, "sum")) == [[4], [2], [1], [3], [0, 5]]
    # With a class token, token 0 never merges; 4 merges into 3; unmerged A tokens return
    # to their original order with CLS first.
    merge = tome.bipartite_soft_matching(metric, r=1, class_token=True)
    assert _rows(merge(EYE6, "sum")) == [[0], [2], [1], [3, 4], [5]]
    merge = tome.bipartite_soft_matching(metric, r=2, class_token=True)
    assert _rows(merge(EYE6, "sum")) == [[0], [1], [3, 4], [2, 5]]


def test_distill_token_protection_and_order():
    # 2 is closest to DIST (token 1); 4 is close to 5; CLS is close to DIST too.
    metric = _unit([2, 0, 1, 60, 100, 120])
    merge = tome.bipartite_soft_matching(metric, r=1, class_token=True)
    assert _rows(merge(EYE6, "sum")) == [[0], [4], [1, 2], [3], [5]]
    merge = tome.bipartite_soft_matching(metric, r=1, class_token=True,
                                         distill_token=True)
    # Nobody may merge into DIST: 4 -> 5 wins; order CLS, DIST, other A, other B.
    assert _rows(merge(EYE6, "sum")) == [[0], [1], [2], [3], [4, 5]]
    merge = tome.bipartite_soft_matching(metric, r=2, class_token=True,
                                         distill_token=True)
    assert _rows(merge(EYE6, "sum")) == [[0], [1], [2, 3], [4, 5]]


def test_modes_hand_computed():
    metric = _unit([120.5, 0, 115, 60, 59, 120])
    x = jnp.asarray([[[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]])
    merge = tome.bipartite_soft_matching(metric, r=2)  # 0 -> 5 and 4 -> 3
    np.testing.assert_allclose(merge(x, "sum")[0, :, 0], [3, 2, 9, 7])
    np.testing.assert_allclose(merge(x, "mean")[0, :, 0], [3, 2, 4.5, 3.5])
    np.testing.assert_allclose(merge(x, "amax")[0, :, 0], [3, 2, 5, 6])
    # Two sources into one destination: plain mean over 3 tokens (include-self count).
    merge = tome.bipartite_soft_matching(_unit([119, 0, 121, 60, 200, 120]), r=2)
    np.testing.assert_allclose(merge(x, "mean")[0, :, 0], [5, 2, 4, (1 + 3 + 6) / 3])
    with pytest.raises(ValueError, match="mode"):
        merge(x, "min")


def test_clamp_and_identity():
    metric = _unit([2, 0, 1, 60, 100, 120])
    merge = tome.bipartite_soft_matching(metric, r=10, class_token=True,
                                         distill_token=True)
    assert merge(EYE6).shape == (1, 4, 6)  # (6 - 2) // 2 = 2 merges at most
    merge = tome.bipartite_soft_matching(metric, r=10)
    assert merge(EYE6).shape == (1, 3, 6)
    for r in (0, -3):
        merge = tome.bipartite_soft_matching(metric, r=r, class_token=True)
        assert merge(EYE6, "sum") is EYE6
    assert tome.clamp_r(3, 5, 2) == 0


# ---------------------------------------------------------------- NumPy reference

def _np_matching(metric, r, class_token, distill_token):
    """Straightforward per-example NumPy re-statement of docs/REFERENCES.md §4."""
    t = metric.shape[1]
    r = min(r, (t - class_token - distill_token) // 2)
    plans = []
    for m in metric.astype(np.float64):
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        scores = m[0::2] @ m[1::2].T
        if class_token:
            scores[0, :] = -np.inf
        if distill_token:
            scores[:, 0] = -np.inf
        node_max, node_idx = scores.max(-1), scores.argmax(-1)
        order = sorted(range(len(node_max)), key=lambda i: -node_max[i])
        src, unm = order[:r], order[r:]
        if class_token:
            unm = sorted(unm)
        plans.append((unm, src, [node_idx[i] for i in src]))
    return r, plans


def _np_merge(x, plans, mode, distill_token):
    out = []
    for xb, (unm, src, dst_idx) in zip(x.astype(np.float64), plans):
        a, dst = xb[0::2], xb[1::2].copy()
        count = np.ones(len(dst))
        for s, d in zip(src, dst_idx):
            dst[d] = np.maximum(dst[d], a[s]) if mode == "amax" else dst[d] + a[s]
            count[d] += 1
        if mode == "mean":
            dst = dst / count[:, None]
        u = a[unm]
        if distill_token:
            out.append(np.concatenate([u[:1], dst[:1], u[1:], dst[1:]]))
        else:
            out.append(np.concatenate([u, dst]))
    return np.stack(out)


@pytest.mark.parametrize("t", [11, 12])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("r", [2, 5])
def test_matches_numpy_reference(t, flags, r):
    class_token, distill_token = flags
    rng = np.random.default_rng(100 * t + 10 * r + sum(flags))
    metric = rng.normal(size=(3, t, 8)).astype(np.float32)
    x = rng.normal(size=(3, t, 5)).astype(np.float32)
    r_eff, plans = _np_matching(metric, r, class_token, distill_token)
    for mode in tome.MERGE_MODES:
        merge = tome.bipartite_soft_matching(
            jnp.asarray(metric), r=r, class_token=class_token, distill_token=distill_token)
        got = merge(jnp.asarray(x), mode)
        chex.assert_shape(got, (3, t - r_eff, 5))
        want = _np_merge(x, plans, mode, distill_token)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- invariants

def _random_case(seed, b=2, t=40, c=16):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, (b, t, c)), jax.random.normal(k2, (b, t, 24))


@jax.jit
def _four_layers(metric, x):
    """Four merge steps of r=8 (the last clamps to 7), as in a model."""
    size = source = None
    for r in (8, 8, 8, 8):
        merge = tome.bipartite_soft_matching(metric, r=r, class_token=True,
                                             distill_token=True)
        source = tome.merge_source(merge, x, source)
        x, size = tome.merge_wavg(merge, x, size)
        metric = merge(metric, "mean")
    return x, size, source


@pytest.mark.slow
def test_wavg_sizes_and_sources_through_layers():
    x, size, source = _four_layers(*_random_case(0))
    chex.assert_shape([x, size, source], [(2, 9, 24), (2, 9, 1), (2, 9, 40)])
    chex.assert_tree_all_finite(x)
    src = np.asarray(source)
    assert set(np.unique(src)) == {0.0, 1.0}
    np.testing.assert_array_equal(src.sum(1), 1)  # each original token in one group
    np.testing.assert_allclose(size[..., 0], src.sum(-1))
    np.testing.assert_allclose(size.sum((1, 2)), 40)
    np.testing.assert_array_equal(src[:, 0, 0], 1)  # CLS first, alone
    np.testing.assert_array_equal(src[:, 1, 1], 1)  # DIST second, alone
    np.testing.assert_array_equal(src[:, :2].sum(-1), 1)


def test_wavg_is_size_weighted_mean_of_originals():
    metric, x0 = _random_case(1)
    x, size, source = _four_layers(metric, x0)
    # Each token = plain mean of the original tokens it holds.
    want = jnp.einsum("bto,bod->btd", source, x0) / source.sum(-1, keepdims=True)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_identical_tokens_unchanged():
    metric, _ = _random_case(2)
    x = jnp.broadcast_to(jnp.arange(24.0), (2, 40, 24))
    merge = tome.bipartite_soft_matching(metric, r=15)
    out, size = tome.merge_wavg(merge, x)
    np.testing.assert_allclose(out, x[:, :25], rtol=1e-6)
    np.testing.assert_allclose(size.sum((1, 2)), 40)


def test_merge_gradients_finite_and_stop_at_metric():
    metric, x = _random_case(3)

    def loss(x, metric):
        merge = tome.bipartite_soft_matching(metric, r=12, class_token=True)
        y, size = tome.merge_wavg(merge, x)
        return jnp.sum(y ** 2 * size)

    gx, gm = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, metric)
    chex.assert_tree_all_finite(gx)
    assert float(jnp.abs(gx).sum()) > 0
    np.testing.assert_array_equal(gm, 0)  # matching is a discrete choice


def test_bfloat16_merge_accumulates_in_float32():
    metric, x = _random_case(4)
    merge = tome.bipartite_soft_matching(metric, r=10)
    y16, s16 = tome.merge_wavg(merge, x.astype(jnp.bfloat16))
    y32, _ = tome.merge_wavg(merge, x)
    assert y16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
    np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=3e-2)


# ---------------------------------------------------------------- schedules

def test_parse_schedule_worked_values():
    parse = tome.parse_schedule
    assert parse(16, depth=12) == parse("16", depth=12) == [16] * 12
    assert parse("ramp:16,-1", depth=12) == [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]
    assert parse("ramp:16,1", depth=12) == [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32]
    assert parse("ramp:16,0.5", depth=12) == [8, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24]
    assert parse(" ramp: 13, -0.5", depth=12) == [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7]
    # A two-block list is a list, never (r, inflection).
    assert parse("blocks:16,0", depth=4) == [16, 0, 0, 0]
    assert parse("blocks:3,2", depth=4) == [3, 2, 0, 0]
    for spec, match in [("blocks:1,2,3", "3 entries for a model of depth 2"),
                        ("ramp:16,1.5", r"INFLECTION in \[-1, 1\]"),
                        ("ramp:16", "'ramp:' takes R,INFLECTION"),
                        ("steps:1,2", "unknown tag 'steps'"),
                        ("blocks:1,x", "not a number"),
                        ((16, -1.0), "a tuple is not a schedule"),
                        ([16, 0], "a list is not a schedule"),
                        (True, "a bool is not a schedule"),
                        (-2, "merges must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            parse(spec, depth=2)


def test_jit_static_shapes_no_retrace():
    traces = []

    @jax.jit
    def step(metric, x):
        traces.append(1)
        merge = tome.bipartite_soft_matching(metric, r=9, class_token=True)
        return tome.merge_wavg(merge, x)

    for seed in range(3):
        metric, x = _random_case(seed)
        y, size = step(metric, x)
        chex.assert_shape(y, (2, 31, 24))
    assert len(traces) == 1 and step._cache_size() == 1
