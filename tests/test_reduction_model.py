"""Token reduction (ToMe, TopK pruning) inside the AST: static shapes, parity, validation."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models import prune
from fast_ast_jax.models.ast import create_ast

# Tiny model: 64 mel x 100 frames, strides 16/10 -> 4 x 9 = 36 patches (+ CLS, DIST).
TINY = dict(num_classes=5, width=32, depth=3, num_heads=2, mlp_dim=128, frames=100,
            num_mel_bins=64, fstride=16, tstride=10)


@pytest.fixture(scope="module")
def params_and_input():
    model = create_ast("tiny", **TINY)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 100, 64))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    return params, x


def _apply(model, params, x):
    # Jitted: one compilation is far cheaper than op-by-op dispatch of every merge.
    return jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(
        params, x)


@pytest.mark.slow
def test_off_is_bit_identical(params_and_input):
    params, x = params_and_input
    def run(model):
        return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)

    plain = run(create_ast("tiny", **TINY))
    off = run(create_ast("tiny", **TINY, tome_r=0, prune_keep_rate=1.0, prune_fuse=True,
                         tome_prop_attn=True))
    assert jnp.array_equal(plain, off)
    # An explicit all-zero schedule is also the plain model.
    assert jnp.array_equal(plain, run(create_ast("tiny", **TINY, tome_r="blocks:0,0")))


# Token counts leaving each block, by hand from 38 tokens (36 patches + CLS + DIST). The
# last block (2) never reduces, whatever the schedule says.
@pytest.mark.parametrize("over, want", [
    (dict(tome_r="ramp:8,-1"), [22, 14, 14]),  # r 16, 8, 0
    (dict(tome_r="blocks:20,20,20"), [20, 11, 11]),  # clamped to (T - 2) // 2: 18, 9; 0
    # keep ceil(0.5 * 36) = 18 (+ fused) -> 21; block 1: ceil(0.5 * 19) = 10 + 1 -> 13
    (dict(prune_keep_rate=0.5, prune_layers=(0, 1, 2), prune_fuse=True), [21, 13, 13]),
    # r 3 -> 35; block 1 keeps ceil(0.7 * 33) = 24 -> 26, r 3 -> 23; no r 3 in block 2
    (dict(prune_keep_rate=0.7, prune_layers=(1,), prune_score="cls_dist", tome_r=3),
     [35, 23, 23]),
    # r 3 -> 35; block 1 keeps ceil(0.5 * 33) = 17 + fused -> 20, r 3 -> 17
    (dict(tome_r=3, prune_keep_rate=0.5, prune_layers=(1,), prune_fuse=True,
          tome_prop_attn=False), [35, 17, 17]),
])
def test_shapes_shrink_per_layer(params_and_input, over, want):
    params, x = params_and_input
    model = create_ast("tiny", **TINY, trace_source=True, **over)
    plan = model.token_plan()
    seen = []

    # Record the real array shape entering each block's MLP via the block's norm2 input.
    def interceptor(next_fun, args, kwargs, context):
        if context.module.name == "norm2" and context.method_name == "__call__":
            seen.append(args[0].shape)
        return next_fun(*args, **kwargs)

    with nn_intercept(interceptor):
        logits, state = _apply(model, params, x)
    chex.assert_shape(logits, (2, 5))
    chex.assert_tree_all_finite(logits)
    assert [s[1] for s in seen] == [lp.tokens_out for lp in plan]
    assert [lp.tokens_out for lp in plan] == want
    inter = state["intermediates"]
    t_final = plan[-1].tokens_out
    chex.assert_shape(inter["sizes"][0], (2, t_final, 1))
    chex.assert_shape(inter["source"][0], (2, t_final, 38))
    source = np.asarray(inter["source"][0])
    assert set(np.unique(source)) <= {0.0, 1.0}
    # Each original token lies in at most one group (exactly one without pruning).
    per_token = source.sum(axis=1)
    assert per_token.max() == 1
    if "prune_keep_rate" not in over:
        np.testing.assert_array_equal(per_token, 1)
        np.testing.assert_allclose(inter["sizes"][0].sum(axis=(1, 2)), 38)
    # Sizes equal the number of original tokens each row of source holds.
    np.testing.assert_allclose(inter["sizes"][0][..., 0], source.sum(-1))
    # CLS and DIST stay in front, untouched by merges.
    np.testing.assert_array_equal(source[:, 0, 0], 1)
    np.testing.assert_array_equal(source[:, 1, 1], 1)
    np.testing.assert_array_equal(source[:, :2].sum(-1), 1)
    for i, lp in enumerate(plan):
        if lp.keep is not None:
            chex.assert_shape(inter[f"prune_kept_{i}"][0], (2, lp.keep))
            chex.assert_shape(inter[f"prune_scores_{i}"][0], (2, lp.tokens_in - 2))


def nn_intercept(fn):
    import flax.linen as nn
    return nn.intercept_methods(fn)


def test_token_plan_matches_reference_counts():
    # AST 10/10 on 1024 frames: 1214 tokens; r=300 constant (docs/REFERENCES.md §4: effective r
    # [300, 300, 300, 156, 78, 39, 19, 10, 5, 2, 1, 1], counts [914, ..., 5, 4, 3]), except
    # that the last block never merges.
    model = create_ast("base", tome_r=300)
    plan = model.token_plan()
    assert [lp.r for lp in plan] == [300, 300, 300, 156, 78, 39, 19, 10, 5, 2, 1, 0]
    assert [lp.tokens_out for lp in plan] == [914, 614, 314, 158, 80, 41, 22, 12, 7, 5, 4, 4]
    counts = create_ast("base", tome_r=100).token_counts()
    assert counts[:2] == [1114, 1014] and counts[-2:] == [114, 114]  # reference: 114, 58
    # TopK on stride 16 (512 patches), keep 0.7 at blocks 3, 6, 9 (docs/REFERENCES.md §5).
    model = create_ast("base", fstride=16, tstride=16, prune_keep_rate=0.7)
    assert [lp.keep for lp in model.token_plan() if lp.keep] == [359, 252, 177]
    assert model.token_counts()[-1] == 2 + 177


@pytest.mark.parametrize("over", [
    dict(tome_r=4), dict(tome_r="blocks:0,0,9"), dict(tome_r="ramp:6,1"),
    dict(prune_keep_rate=0.5, prune_layers=(1, 2), prune_fuse=True),
    dict(prune_keep_rate=0.6, prune_layers=(2,), tome_r=3, prune_score="cls_dist"),
])
@pytest.mark.slow
def test_last_block_reduction_of_older_versions_gave_these_logits(params_and_input, over,
                                                                  monkeypatch):
    """Older versions reduced in the last block when the schedule said so (and then ran it
    on every token); today that entry is ignored and the last block computes only CLS /
    DIST. The logits are the same, so AST checkpoints load with the meaning they had."""
    from fast_ast_jax.models import ast

    params, x = params_and_input
    model = create_ast("tiny", **TINY, **over)
    assert model.token_plan()[-1].r == 0 and model.token_plan()[-1].keep is None
    new = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    # The older plan: the schedule's last entry kept, and no prefix-only last block.
    old_schedule = functools.partial(ast.reduction_schedule, reduce_last_block=True)
    monkeypatch.setattr(ast, "reduction_schedule", old_schedule)
    monkeypatch.setattr(ast.AST, "prefix_only_last_block", lambda self: False)
    last = model.token_plan()[-1]
    assert last.r > 0 or last.keep is not None  # the old last block did reduce
    old = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gradients_finite(params_and_input):
    params, x = params_and_input
    model = create_ast("tiny", **TINY, tome_r=6, prune_keep_rate=0.6, prune_layers=(1,),
                       prune_fuse=True)

    def loss(p):
        return jnp.sum(model.apply({"params": p}, x) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads["block_2"]["mlp"]["fc1"]["kernel"]).sum()) > 0


def test_no_recompilation(params_and_input):
    params, x = params_and_input
    model = create_ast("tiny", **TINY, tome_r=4, prune_keep_rate=0.8, prune_layers=(2,))
    traces = []

    @jax.jit
    def fwd(p, x):
        traces.append(1)
        return model.apply({"params": p}, x)

    a = fwd(params, x)
    b = fwd(params, x + 1.0)
    jax.block_until_ready(b)
    assert len(traces) == 1
    assert fwd._cache_size() == 1
    assert not jnp.array_equal(a, b)


@pytest.mark.slow
def test_bfloat16_runs(params_and_input):
    params, x = params_and_input
    model = create_ast("tiny", **TINY, tome_r=5, prune_keep_rate=0.7, prune_layers=(1,),
                       dtype="bfloat16")
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("over, match", [
    (dict(prune_keep_rate=0.0), "keep_rate"),
    (dict(prune_keep_rate=1.5), "keep_rate"),
    (dict(tome_r=-1), r"tome_r: ToMe schedule -1: merges must be >= 0"),
    (dict(tome_r="blocks:1,2,3,4"), "4 entries for a model of depth 3"),
    (dict(prune_keep_rate=0.5, prune_layers=(4,)), "prune_layers"),
    (dict(prune_score="max"), "prune_score"),
    (dict(prune_score="cls_dist", dist_token=False), "dist_token"),
    (dict(tome_r="ramp:4,2.0"), r"INFLECTION in \[-1, 1\]"),
    (dict(tome_r=(8, -1)), "a tuple is not a schedule"),
    (dict(tome_r=[16, 0]), "a (list|tuple) is not a schedule"),  # flax stores lists as tuples
    (dict(tome_r="16,0"), "several values need a 'ramp:' or 'blocks:' tag"),
])
def test_validation(params_and_input, over, match):
    params, x = params_and_input
    model = create_ast("tiny", **{**TINY, **over})
    with pytest.raises(ValueError, match=match):
        model.token_plan()
    with pytest.raises(ValueError, match=match):
        model.apply({"params": params}, x)


def test_json_round_trip_schedule():
    # The spec is a string or an int: it reads back from checkpoint JSON unchanged.
    import json

    model = create_ast("tiny", **TINY, tome_r="ramp:8,-1")
    again = create_ast("tiny", **TINY, tome_r=json.loads(json.dumps(model.tome_r)))
    assert again.tome_r == model.tome_r and again.r_schedule() == [16, 8, 0]


@pytest.mark.slow
def test_prune_scores_are_class_attention(params_and_input):
    # The sown scores equal the CLS row of a full softmax attention computed by hand.
    params, x = params_and_input
    model = create_ast("tiny", **TINY, prune_keep_rate=0.5, prune_layers=(0,))
    _, state = _apply(model, params, x)
    scores = state["intermediates"]["prune_scores_0"][0]
    def block0_input(p, x):
        captured = []

        def grab(next_fun, args, kwargs, context):
            if context.module.name == "block_0" and context.method_name == "__call__":
                captured.append(args[0])
            return next_fun(*args, **kwargs)

        with nn_intercept(grab):
            model.apply({"params": p}, x)
        return captured[0]

    tokens = jax.jit(block0_input)(params, x)
    blk = params["block_0"]
    mu = tokens.mean(-1, keepdims=True)
    var = ((tokens - mu) ** 2).mean(-1, keepdims=True)
    y = (tokens - mu) / jnp.sqrt(var + 1e-6) * blk["norm1"]["scale"] + blk["norm1"]["bias"]
    qkv = jnp.einsum("btw,wshd->btshd", y, blk["attn"]["qkv"]["kernel"])
    qkv = qkv + blk["attn"]["qkv"]["bias"]
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 16 ** -0.5, axis=-1)
    np.testing.assert_allclose(scores, probs[:, :, 0, 2:].mean(1), rtol=1e-5, atol=1e-7)
    kept = state["intermediates"]["prune_kept_0"][0]
    assert kept.shape == (2, prune.num_kept(36, 0.5))
    # Kept in descending score order, and they are the top scores.
    got = np.take_along_axis(np.asarray(scores), np.asarray(kept), axis=1)
    assert np.all(np.diff(got, axis=1) <= 0)
    np.testing.assert_allclose(got, -np.sort(-np.asarray(scores), axis=1)[:, :18])


@pytest.mark.slow
def test_proportional_attention_switch(params_and_input):
    params, x = params_and_input

    def run(**over):
        model = create_ast("tiny", **TINY, **over)
        return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)

    # With ToMe, log(size) changes the attention from the 2nd block on.
    assert not jnp.allclose(run(tome_r=6), run(tome_r=6, tome_prop_attn=False))
    # Pure pruning keeps plain attention, even with a fused (size > 1) token.
    fused = dict(prune_keep_rate=0.5, prune_layers=(0,), prune_fuse=True)
    assert jnp.array_equal(run(**fused), run(**fused, tome_prop_attn=False))
