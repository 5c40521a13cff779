"""Packed ElasticAST: same parameters as AST, equal to AST's padded path, no leakage."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax import packing
from fast_ast_jax.models.ast import AST, Block
from fast_ast_jax.models.elastic import (ElasticAST, check_positions, factorise_pos_embed,
                                         masked_mean_pool, params_from_ast, unpack_logits)

MEL = 32
KW = dict(num_classes=5, width=32, depth=2, num_heads=2, mlp_dim=64, fstride=16, tstride=16,
          num_mel_bins=MEL, frames=128)
RNG = np.random.default_rng(0)


def _clip(frames):
    return RNG.normal(size=(frames, MEL)).astype(np.float32)


def _batch(clips, *, rows=1, max_tokens=64, max_slots=4):
    samples = [packing.patchify(c) for c in clips]
    return packing.pack(samples, rows=rows, max_tokens=max_tokens, max_slots=max_slots).arrays()


@pytest.fixture(scope="module")
def ast_params():
    return jax.jit(AST(**KW).init)(jax.random.PRNGKey(0), jnp.zeros((1, 128, MEL)))["params"]


@jax.jit
def _plain_ast_mean(params, fbank):
    """AST's padded path on the patch tokens (no CLS/DIST), mean pooled: the reference."""
    x = jnp.asarray(fbank.T)[None, ..., None]  # (1, F, T, 1) as AST.embed
    x = nn.Conv(KW["width"], (16, 16), strides=(16, 16), padding="VALID").apply(
        {"params": params["patch_embed"]}, x)
    f_dim, t_dim = x.shape[1], x.shape[2]
    x = x.reshape(1, -1, KW["width"])
    grid = params["pos_embed"][0, 2:].reshape(MEL // 16, 128 // 16, -1)  # prefix CLS+DIST
    x = x + grid[:f_dim, :t_dim].reshape(1, -1, KW["width"])
    for i in range(KW["depth"]):
        x = Block(KW["num_heads"], KW["mlp_dim"]).apply({"params": params[f"block_{i}"]}, x)
    x = nn.LayerNorm(1e-6, use_fast_variance=False).apply({"params": params["norm"]}, x)
    x = nn.LayerNorm(1e-5, use_fast_variance=False).apply({"params": params["head_norm"]},
                                                         x.mean(axis=1))
    return nn.Dense(KW["num_classes"]).apply({"params": params["head"]}, x)[0]


@pytest.mark.slow
def test_packed_path_equals_ast_padded_path_with_ast_weights(ast_params):
    model = ElasticAST(**KW, pos_embedding="ast", pool="mean")
    clips = [_clip(128), _clip(70)]  # full table and a shorter clip (first time columns)
    logits, valid = jax.jit(model.apply)({"params": ast_params}, _batch(clips))
    np.testing.assert_array_equal(valid, [[True, True, False, False]])
    for s, clip in enumerate(clips):
        np.testing.assert_allclose(logits[0, s], _plain_ast_mean(ast_params, clip),
                                   atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(logits[0, 2:], 0.0)


@pytest.mark.parametrize("pool", ["attn", "mean"])
@pytest.mark.slow
def test_no_leakage_between_samples_of_a_row(pool):
    model = ElasticAST(**KW, pool=pool)
    clips = [_clip(48), _clip(128), _clip(16), _clip(33)]  # 6 + 16 + 2 + 4 tokens
    packed = _batch(clips, max_tokens=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), packed)["params"]
    apply = jax.jit(model.apply)
    logits, valid = apply({"params": params}, packed)
    assert bool(valid.all())
    for s, clip in enumerate(clips):
        alone, _ = apply({"params": params}, _batch([clip], max_tokens=32))
        np.testing.assert_allclose(logits[0, s], alone[0, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over", [dict(tome_r=3), dict(prune_keep_rate=0.5, prune_layers=(1,))])
@pytest.mark.slow
def test_last_block_never_reduces_unless_an_older_checkpoint_did(over):
    """As in AST, the schedule's last-block entry is ignored. Here it would change the
    pooled tokens, so checkpoints saved before that rule (no reduce_last_block in their
    metadata) load with reduce_last_block=True and get the logits they were trained with."""
    from fast_ast_jax.checkpoints.store import model_fields_from_meta

    model = ElasticAST(**KW, **over)
    assert model.schedules()[0][-1] == 0 and model.schedules()[1][-1] == 1.0
    old = model.clone(reduce_last_block=True)
    counts, old_counts = model.token_counts(32, 4), old.token_counts(32, 4)
    assert counts[-1] == counts[-2] and old_counts[-1] < old_counts[-2]
    packed = _batch([_clip(48), _clip(128), _clip(33)], max_tokens=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), packed)["params"]
    new_logits, _ = jax.jit(model.apply)({"params": params}, packed)
    old_logits, _ = jax.jit(old.apply)({"params": params}, packed)
    assert not np.allclose(new_logits, old_logits, atol=1e-4)
    # Metadata -> fields: an older ElasticAST keeps its meaning, a newer one its field; an
    # AST needs no field (its last-block reduction never changed the logits).
    fields = dict(KW, **over)
    older = model_fields_from_meta({"model": fields, "model_class": "elastic"})
    assert ElasticAST(**older) == old
    newer = model_fields_from_meta({"model": {**fields, "reduce_last_block": False},
                                    "model_class": "elastic"})
    assert ElasticAST(**newer) == model
    assert "reduce_last_block" not in model_fields_from_meta({"model": {"depth": 2}})


def test_rows_and_unpack_restore_sample_order():
    model = ElasticAST(**KW, pool="attn")
    clips = [_clip(n) for n in (128, 64, 32, 96, 16)]  # 16, 8, 4, 12, 2 tokens
    packed = _batch(clips, rows=3, max_tokens=24, max_slots=3)
    assert packed["slot_index"].tolist() == [[0, 1, -1], [2, 3, 4], [-1, -1, -1]]
    params = jax.jit(model.init)(jax.random.PRNGKey(2), packed)["params"]
    apply = jax.jit(model.apply)
    logits, valid = apply({"params": params}, packed)
    per_sample = unpack_logits(logits, packed["slot_index"], len(clips))
    for i, clip in enumerate(clips):
        alone, _ = apply({"params": params}, _batch([clip], rows=3, max_tokens=24,
                                                    max_slots=3))
        np.testing.assert_allclose(per_sample[i], alone[0, 0], atol=1e-5, rtol=1e-5)
    assert int(valid.sum()) == 5


@pytest.mark.slow
def test_gradients_are_finite_with_padding_rows():
    model = ElasticAST(**KW, tome_r=3, prune_keep_rate=0.7, prune_layers=(0,))
    packed = _batch([_clip(40), _clip(20)], rows=2, max_tokens=24)
    params = jax.jit(model.init)(jax.random.PRNGKey(3), packed)["params"]

    def loss(p):
        logits, valid = model.apply({"params": p}, packed)
        return jnp.where(valid[..., None], logits ** 2, 0.0).sum()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["pos_embed_time"]).sum()) > 0


def test_factorised_tables_and_check_positions(ast_params):
    freq, time = factorise_pos_embed(ast_params["pos_embed"], grid=(2, 8), num_prefix=2)
    grid = np.asarray(ast_params["pos_embed"][0, 2:]).reshape(2, 8, -1)
    np.testing.assert_allclose(freq, grid.mean(1), atol=1e-6)
    np.testing.assert_allclose(time, grid.mean(0), atol=1e-6)
    freq2, time2 = factorise_pos_embed(ast_params["pos_embed"], grid=(2, 8), num_prefix=2,
                                       new_grid=(2, 16))
    assert freq2.shape == (2, 32) and time2.shape == (16, 32)
    model = ElasticAST(**KW)
    check_positions(model, _batch([_clip(128)])["positions"])
    with pytest.raises(ValueError, match="time patch position 8 is outside.*table of 8"):
        check_positions(model, _batch([_clip(144)], max_tokens=64)["positions"])


def test_masked_mean_pool_weights_sizes():
    x = jnp.arange(12, dtype=jnp.float32).reshape(1, 4, 3)
    seg = jnp.array([[1, 1, 2, 0]])
    size = jnp.array([[[1.0], [3.0], [2.0], [5.0]]])
    out = masked_mean_pool(x, segment_ids=seg, num_slots=3, size=size)
    np.testing.assert_allclose(out[0, 0], (x[0, 0] + 3 * x[0, 1]) / 4)
    np.testing.assert_allclose(out[0, 1], x[0, 2])
    np.testing.assert_allclose(out[0, 2], 0.0)


def test_bad_input_errors():
    model = ElasticAST(**KW)
    packed = _batch([_clip(32)])
    with pytest.raises(ValueError, match="patches have 255 values"):
        bad = dict(packed, patches=packed["patches"][..., :255])
        model.init(jax.random.PRNGKey(0), bad)
    with pytest.raises(ValueError, match="unknown pool"):
        ElasticAST(**KW, pool="max").init(jax.random.PRNGKey(0), packed)
    with pytest.raises(ValueError, match="prune_layers"):
        ElasticAST(**KW, prune_keep_rate=0.5, prune_layers=(5,)).init(
            jax.random.PRNGKey(0), packed)


@pytest.mark.slow
def test_params_from_ast(ast_params):
    packed = _batch([_clip(128), _clip(40)])
    same = ElasticAST(**KW, pos_embedding="ast", pool="mean")
    init = jax.jit(same.init)(jax.random.PRNGKey(4), packed)["params"]
    converted = params_from_ast(same, ast_params, ast_grid=(2, 8), num_prefix=2, init=init)
    apply = jax.jit(same.apply)
    np.testing.assert_allclose(apply({"params": converted}, packed)[0],
                               apply({"params": ast_params}, packed)[0], atol=1e-6)
    longer = ElasticAST(**{**KW, "frames": 256, "num_classes": 7})  # factorised, new head
    init = jax.jit(longer.init)(jax.random.PRNGKey(4), packed)["params"]
    converted = params_from_ast(longer, ast_params, ast_grid=(2, 8), num_prefix=2, init=init)
    assert converted["pos_embed_time"].shape == (16, 32)
    assert converted["head"] is init["head"] and converted["block_1"] is ast_params["block_1"]
    assert converted["attn_pool"] is init["attn_pool"]
