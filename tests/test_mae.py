"""Masked-spectrogram pretraining (models/mae.py): static masking, shrinking encoder arrays,
the AST parameter layout of the encoder, reconstruction learning, analytic cost."""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fast_ast_jax import bench
from fast_ast_jax.audio.features import features
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.synthetic import SyntheticSource
from fast_ast_jax.models import ast, elastic, mae
from fast_ast_jax.patches import patch_shape


# The small model of the brief: depth 2, width 64, 64 mel bins, 128 frames; 16x16 patches
# at stride 16 -> a 4 x 8 grid of N = 32 patches.
SMALL = dict(width=64, depth=2, num_heads=2, mlp_dim=128, num_mel_bins=64, frames=128,
             fstride=16, tstride=16)
DECODER = dict(decoder_width=32, decoder_depth=1, decoder_heads=2)


def _mae(**overrides) -> mae.MAE:
    return mae.create_mae("tiny", **{**SMALL, **DECODER, **overrides})


def _inputs(batch=2, frames=128, bins=64, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, frames, bins))


@pytest.mark.parametrize("n,ratio,expected", [(32, 0.75, 8), (32, 0.8, 6), (1212, 0.8, 242),
                                              (101, 0.5, 51), (32, 0.0, 32)])
def test_num_visible_is_documented_rounding(n, ratio, expected):
    # V = N - round(ratio * N): 0.8 * 32 = 25.6 -> 26 masked; 0.5 * 101 = 50.5 -> 50 (half
    # to even) masked.
    assert mae.num_visible(num_patches=n, mask_ratio=ratio) == expected


def test_random_mask_partitions_the_grid_per_clip():
    visible, masked = mae.random_mask(jax.random.PRNGKey(0), batch=5, num_patches=32,
                                      num_visible=8)
    chex.assert_shape(visible, (5, 8))
    chex.assert_shape(masked, (5, 24))
    both = np.sort(np.concatenate([visible, masked], axis=1), axis=1)
    np.testing.assert_array_equal(both, np.broadcast_to(np.arange(32), (5, 32)))
    assert len({tuple(v) for v in np.asarray(visible)}) == 5  # each clip its own mask
    other, _ = mae.random_mask(jax.random.PRNGKey(1), batch=5, num_patches=32, num_visible=8)
    assert not np.array_equal(visible, other)


def test_bad_mask_ratio_is_one_clear_error():
    with pytest.raises(ValueError, match=r"MAE.mask_ratio=1.0 must be in \[0, 1\)"):
        _mae(mask_ratio=1.0).num_visible


# (patch, strides, N, values per patch): 16x16 -> a 4 x 8 grid; SSAST's frame patches over
# all 64 bins x 2 frames -> 1 x 64; 16 bins x 8 frames -> 4 x 16.
PATCHES = [(16, (16, 16), 32, 256), ((64, 2), (64, 2), 64, 128), ((16, 8), (16, 8), 64, 128)]


@pytest.mark.parametrize("patch,strides,n,dim", PATCHES)
def test_encoder_arrays_shrink_to_the_visible_patches(patch, strides, n, dim):
    model = _mae(mask_ratio=0.75, patch_size=patch, fstride=strides[0], tstride=strides[1])
    x, key = _inputs(), jax.random.PRNGKey(0)
    prefix, v = 2, n // 4
    assert model.num_patches == n and model.num_visible == v

    def run(x, key):
        variables = model.init(jax.random.PRNGKey(1), x, key=key)
        # Every block's output (the encoder's and the decoder's) is captured.
        return model.apply(variables, x, key=key, capture_intermediates=lambda m, _: (
            isinstance(m, ast.Block)), mutable=["intermediates"])

    out, state = jax.eval_shape(run, x, key)
    inter = state["intermediates"]
    for i in range(model.depth):  # the encoder never holds the masked patches
        chex.assert_shape(inter["encoder"][f"block_{i}"]["__call__"][0], (2, prefix + v, 64))
    chex.assert_shape(inter["decoder"]["block_0"]["__call__"][0], (2, prefix + n, 32))
    chex.assert_shape(out.pred, (2, n, dim))
    chex.assert_shape(out.target, (2, n, dim))
    chex.assert_shape([out.visible, out.masked, out.loss], [(2, v), (2, n - v), (2,)])


@pytest.mark.slow
def test_one_compilation_serves_every_mask():
    model = _mae()
    x = _inputs()
    variables = model.init(jax.random.PRNGKey(1), x, key=jax.random.PRNGKey(2))
    traces = []

    @jax.jit
    def loss(variables, x, key):
        traces.append(1)  # runs once per trace, not per call
        return model.apply(variables, x, key=key)

    outs = [loss(variables, x, jax.random.PRNGKey(k)) for k in range(3)]
    assert len(traces) == 1
    assert not np.array_equal(outs[0].visible, outs[1].visible)  # the masks did change
    assert not np.allclose(outs[0].loss, outs[1].loss)


@pytest.mark.parametrize("patch,fstride,tstride", [(16, 16, 16), (16, 10, 12), ((64, 2), 64, 2),
                                                  ((16, 8), 10, 6)])
@pytest.mark.slow
def test_patches_are_what_the_patch_embedding_sees(patch, fstride, tstride):
    """extract_patches @ kernel == AST's conv patch embedding, overlapping or not, square or
    not; folding them back restores every covered fbank value."""
    model = ast.create_ast("tiny", **{**SMALL, "fstride": fstride, "tstride": tstride},
                           patch_size=patch, num_classes=3)
    ph, pw = patch_shape(patch)
    x = _inputs(batch=2, frames=128, bins=64)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply({"params": params}, x, capture_intermediates=lambda m, _: (
        m.name == "patch_embed"), mutable=["intermediates"])
    conv = state["intermediates"]["patch_embed"]["__call__"][0]  # (B, f_dim, t_dim, W)
    patches = mae.extract_patches(x, patch_size=patch, fstride=fstride, tstride=tstride)
    f_dim, t_dim = model.grid()
    chex.assert_shape(patches, (2, f_dim * t_dim, ph * pw))
    kernel = params["patch_embed"]["kernel"].reshape(ph * pw, -1)
    expected = patches @ kernel + params["patch_embed"]["bias"]
    np.testing.assert_allclose(conv.reshape(expected.shape), expected, atol=2e-5)
    folded = mae.fold_patches(patches, frames=128, num_mel_bins=64, patch_size=patch,
                              fstride=fstride, tstride=tstride)
    covered_f, covered_t = (f_dim - 1) * fstride + ph, (t_dim - 1) * tstride + pw
    np.testing.assert_allclose(folded[:, :covered_t, :covered_f],
                               x[:, :covered_t, :covered_f], atol=1e-5)
    assert not np.any(folded[:, covered_t:]) and not np.any(folded[:, :, covered_f:])


def _ast_twin(model: mae.MAE, **overrides) -> ast.AST:
    return ast.AST(num_classes=5, **model.backbone_fields(), **overrides)


def test_encoder_is_the_ast_without_its_head():
    """With the MAE's encoder params, an AST computes the same pre-head tokens: the
    unmasked `encode` equals the AST's final-LayerNorm output on every token, and with
    mask_ratio 0 the masked path's encoded patches are the AST's in mask order."""
    model = _mae(mask_ratio=0.0)
    x = _inputs()
    variables = model.init(jax.random.PRNGKey(1), x, key=jax.random.PRNGKey(2))
    enc = mae.encoder_params(variables)
    # trace_source keeps every token in the last block (the plain AST computes only the
    # class tokens there, which the head reads); it changes no value.
    twin = _ast_twin(model, trace_source=True)
    fresh = twin.init(jax.random.PRNGKey(3), x)["params"]
    params = {**fresh, **enc}
    _, state = twin.apply({"params": params}, x, capture_intermediates=lambda m, _: (
        m.name == "norm"), mutable=["intermediates"])
    ast_tokens = state["intermediates"]["norm"]["__call__"][0]  # (B, 2 + N, W)

    embedding, tokens = model.apply(variables, x, method=mae.MAE.encode)
    np.testing.assert_allclose(tokens, ast_tokens[:, 2:], atol=1e-5)
    np.testing.assert_allclose(embedding, ast_tokens[:, :2].mean(axis=1), atol=1e-5)

    out, state = model.apply(variables, x, key=jax.random.PRNGKey(4), capture_intermediates=(
        lambda m, _: isinstance(m, mae.Encoder)), mutable=["intermediates"])
    masked_path = state["intermediates"]["encoder"]["__call__"][0]  # (B, 2 + V, W), V = N
    gathered = jnp.take_along_axis(ast_tokens[:, 2:], out.visible[..., None], axis=1)
    np.testing.assert_allclose(masked_path[:, 2:], gathered, atol=1e-5)
    np.testing.assert_allclose(masked_path[:, :2], ast_tokens[:, :2], atol=1e-5)
    # And the plain (prefix-only last block) AST's pooled features agree too.
    plain = _ast_twin(model)
    _, state = plain.apply({"params": params}, x, capture_intermediates=lambda m, _: (
        m.name == "norm"), mutable=["intermediates"])
    pooled = state["intermediates"]["norm"]["__call__"][0].mean(axis=1)
    np.testing.assert_allclose(embedding, pooled, atol=1e-5)


def _shapes(tree):
    return jax.tree.map(np.shape, tree)


@pytest.mark.slow
def test_encoder_params_load_into_ast_and_elastic_ast():
    model = _mae()
    x = _inputs()
    enc = mae.encoder_params(model.init(jax.random.PRNGKey(1), x, key=jax.random.PRNGKey(2)))
    fresh = _ast_twin(model).init(jax.random.PRNGKey(3), x)["params"]
    assert set(fresh) - set(enc) == {"head_norm", "head"}  # all else comes from pretraining
    assert _shapes(enc) == _shapes({k: fresh[k] for k in enc})

    # ElasticAST: blocks, patch embedding and final norm map 1:1; the 2-D position table
    # becomes its factorised tables (or its own AST-layout table); class tokens are unused.
    for pos_embedding in elastic.POS_EMBEDDINGS:
        packed = elastic.ElasticAST(num_classes=5, pos_embedding=pos_embedding,
                                    **model.backbone_fields())
        batch = _packed_batch(packed)
        init = packed.init(jax.random.PRNGKey(0), batch)["params"]
        out = elastic.params_from_ast(packed, enc, ast_grid=model.grid(), num_prefix=2,
                                      init=init)
        assert _shapes(out) == _shapes(init)
        logits, _ = packed.apply({"params": out}, batch)
        assert np.isfinite(logits).all()
        for name in ["patch_embed", "norm"] + [f"block_{i}" for i in range(model.depth)]:
            chex.assert_trees_all_equal(out[name], enc[name])
        if pos_embedding == "factorised":
            freq, time = elastic.factorise_pos_embed(enc["pos_embed"], grid=model.grid(),
                                                     num_prefix=2, new_grid=packed.grid)
            np.testing.assert_array_equal(out["pos_embed_freq"], freq)
            np.testing.assert_array_equal(out["pos_embed_time"], time)
        else:
            np.testing.assert_array_equal(out["pos_embed"][:, 2:], enc["pos_embed"][:, 2:])


def _packed_batch(model: elastic.ElasticAST) -> dict:
    """One packed row holding one clip of the model's full grid (random patches)."""
    f_dim, t_dim = model.grid
    n = f_dim * t_dim
    f, t = np.divmod(np.arange(n), t_dim)
    return {"patches": jax.random.normal(jax.random.PRNGKey(5), (1, n, 256)),
            "segment_ids": jnp.ones((1, n), jnp.int32),
            "positions": jnp.asarray(np.stack([f, t], -1)[None], jnp.int32),
            "slot_index": jnp.zeros((1, 1), jnp.int32)}


@pytest.mark.slow
def test_reconstruction_loss_falls_on_generated_audio():
    frontend = FrontEnd(num_mel_bins=64, target_frames=128, mean=-6.0, std=3.0)
    # Clips of 1.3-1.6 s fill all 128 frames (no padded, trivially predictable patches).
    source = SyntheticSource(num_examples=16, min_seconds=1.3, max_seconds=1.6)
    x = jnp.asarray(np.stack([features(source[i]["audio"], frontend=frontend)
                              for i in range(len(source))]))
    model = _mae(mask_ratio=0.75)
    params = model.init(jax.random.PRNGKey(0), x, key=jax.random.PRNGKey(1))["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(params, key):
        return model.apply({"params": params}, x, key=key).loss.mean()

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    held_out = jax.random.PRNGKey(999)  # one fixed mask, never trained on
    before = float(jax.jit(loss_fn)(params, held_out))
    for i in range(60):
        params, opt_state, _ = step(params, opt_state, jax.random.PRNGKey(i))
    after = float(jax.jit(loss_fn)(params, held_out))
    # Per-patch normalised targets: predicting zeros (or any patch's own mean) scores ~1,
    # so falling well below 1 means the decoder reconstructs masked patches from context.
    assert after < 0.5 * before and after < 0.85, (before, after)  # seen: 1.97 -> 0.71


def test_a_pretraining_checkpoint_from_before_the_field_resumes(tmp_path):
    """A checkpoint saved before a model field existed lacks it (simulated: norm_pix_loss
    deleted from the saved fields); resuming it with the field's default (what it was
    trained with) is no mismatch, with another value it is."""
    from fast_ast_jax.models import model_fields
    from fast_ast_jax.train.loop import check_resumable

    meta = {"model": json.loads(json.dumps(model_fields(_mae()))), "model_class": "mae",
            "frontend": FrontEnd().to_dict(), "labels": [], "loss": "softmax"}
    old = json.loads(json.dumps(meta))
    del old["model"]["norm_pix_loss"]
    check_resumable(old, meta, directory=tmp_path)
    new = json.loads(json.dumps(meta))
    new["model"]["norm_pix_loss"] = False
    with pytest.raises(ValueError, match="norm_pix_loss"):
        check_resumable(old, new, directory=tmp_path)


def test_pretraining_macs_are_a_fraction_of_a_supervised_forward():
    """Analytic MACs (bench.ast_macs) at mask 0.75 for AST-base, 1024 frames, stride 10."""
    model = mae.create_mae("base", mask_ratio=0.75)
    supervised = bench.ast_macs(ast.create_ast("base"))
    encoder = bench.ast_macs(model)
    n = 12 * 101  # 1212 patches
    v, w = n - 909, 768
    assert model.num_visible == v == 303
    t = 2 + v  # every encoder block sees the class tokens + the visible patches only
    assert {(lt.tokens_in, lt.tokens_out) for lt in encoder.layers} == {(t, t)}
    assert encoder.total == n * 256 * w + 12 * (12 * t * w * w + 2 * t * t * w)
    assert encoder.parts["head"] == 0
    assert supervised.total / encoder.total == pytest.approx(4.37, abs=0.01)
    # Decoder (128 wide, 2 blocks on all 2 + N tokens) included, a pretraining step costs
    # about a quarter of a supervised one (fwd + bwd both scale with these MACs).
    step = encoder.total + model.decoder_macs()
    assert supervised.total / step == pytest.approx(4.18, abs=0.01)
    assert supervised.total / step >= 3.0


def test_frame_patch_macs_count_the_patch_it_has():
    """128x2 frame patches (SSAST) over 1024 frames: N = 512 tokens of 256 values each, so
    the embedding and the decoder's prediction count 128 * 2 values per patch."""
    model = mae.create_mae("base", mask_ratio=0.75, patch_size=(128, 2), fstride=128,
                           tstride=2)
    n, v, w, d = 512, 128, 768, 128
    assert model.grid() == (1, n) and model.num_visible == v
    macs = bench.ast_macs(model)
    assert macs.parts["patch_embed"] == n * 128 * 2 * w
    t = 2 + n
    assert model.decoder_macs() == (2 + v) * w * d + 2 * (12 * t * d * d + 2 * t * t * d) \
        + n * d * 256
    supervised = bench.ast_macs(ast.create_ast("base", patch_size=(128, 2), fstride=128,
                                               tstride=2))
    assert supervised.layers[0].tokens_in == 2 + n
