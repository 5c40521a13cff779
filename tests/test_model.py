"""AST model: shapes, geometry, runtime position adaptation, DIST token, bf16, dropout."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models import AST, SIZES, create_ast
from fast_ast_jax.patches import grid_shape, patch_shape

# A small AST for the geometry tests (the sizes themselves are covered below).
MINI = dict(width=64, depth=2, num_heads=2, mlp_dim=128, num_classes=5)


def _init(model: AST, *, seed: int = 0, real: bool = False):
    """Params of `model`. XLA-compiling `init` costs seconds on 2 busy cores, so by default
    the tree comes from `eval_shape` and is filled with numpy noise (LayerNorm scales near
    1); `real=True` runs the model's own initialiser."""
    x = jnp.zeros((1, model.frames, model.num_mel_bins), jnp.float32)
    if real:
        return jax.jit(model.init)(jax.random.PRNGKey(seed), x)["params"]
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), x)["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        return 1 + 0.1 * noise if path[-1].key == "scale" else 0.05 * noise

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _fbank(batch: int, frames: int, mel: int = 128, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, frames, mel), jnp.float32)


@pytest.mark.parametrize("size,frames,batch", [("tiny", 128, 2), ("small", 128, 2),
                                               ("base", 48, 1)])
@pytest.mark.slow
def test_sizes(size, frames, batch):
    model = create_ast(size, frames=frames, fstride=16, tstride=16, num_classes=7)
    params = _init(model)
    width = SIZES[size]["width"]
    f_dim, t_dim = model.grid()
    chex.assert_shape(params["pos_embed"], (1, 2 + f_dim * t_dim, width))
    chex.assert_shape(params["block_11"]["attn"]["qkv"]["kernel"],
                      (width, 3, SIZES[size]["num_heads"], 64))
    out = jax.jit(model.apply)({"params": params}, _fbank(batch, frames))
    chex.assert_shape(out, (batch, 7))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("frames,patch,fstride,tstride,grid", [
    (1024, 16, 10, 10, (12, 101)), (512, 16, 10, 10, (12, 50)), (128, 16, 10, 10, (12, 12)),
    (1024, 16, 16, 16, (8, 64)), (1024, 16, 12, 12, (10, 85)), (100, 16, 12, 14, (10, 7)),
    # non-square: SSAST's frame patches (all 128 bins x 2 frames), and 16 bins x 8 frames
    (1024, (128, 2), 128, 2, (1, 512)), (128, (128, 2), 128, 2, (1, 64)),
    (128, (16, 8), 16, 8, (8, 16)), (100, (16, 8), 10, 6, (12, 16)),
])
def test_geometry(frames, patch, fstride, tstride, grid):
    """Grid sizes of docs/REFERENCES.md §3 (and of non-square patches); the model runs under
    jit at each geometry with N = f_dim * t_dim patch tokens from a (ph, pw) kernel."""
    assert grid_shape(frames=frames, num_mel_bins=128, patch_size=patch, fstride=fstride,
                      tstride=tstride) == grid
    if frames > 512:
        return  # the grid formula is what matters; long inputs are slow on 2 cores
    model = create_ast(frames=frames, patch_size=patch, fstride=fstride, tstride=tstride,
                       **MINI)
    params = _init(model)
    chex.assert_shape(params["patch_embed"]["kernel"], (*patch_shape(patch), 1, 64))
    chex.assert_shape(params["pos_embed"], (1, 2 + grid[0] * grid[1], 64))
    _, state = jax.eval_shape(lambda p, x: model.apply(
        {"params": p}, x, capture_intermediates=lambda m, _: m.name == "block_0",
        mutable=["intermediates"]), params, _fbank(2, frames))
    chex.assert_shape(state["intermediates"]["block_0"]["__call__"][0],
                      (2, 2 + grid[0] * grid[1], 64))  # the first block's tokens
    out = jax.jit(model.apply)({"params": params}, _fbank(2, frames))
    chex.assert_shape(out, (2, 5))
    chex.assert_tree_all_finite(out)


def test_patch_size_is_an_int_or_a_pair():
    """An int is a square patch and is how one is stored (checkpoints of older versions
    hold ints); a pair stays a tuple; anything else is one clear error."""
    assert patch_shape(16) == patch_shape((16,)) == (16, 16)  # (16,): --...patch_size=16
    assert patch_shape([128, 2]) == (128, 2)
    assert create_ast("tiny", patch_size=(16, 16)).patch_size == 16
    assert create_ast("tiny", patch_size=[128, 2], fstride=128, tstride=2).patch_size == (128, 2)
    for bad in (0, (16, 0), (16, 2.5), (16, 2, 2), "16"):
        with pytest.raises(ValueError, match=r"patch_size=.*: give an int > 0"):
            patch_shape(bad)


def test_input_checks():
    model = AST(frames=64, **MINI)
    params = _init(model)
    with pytest.raises(ValueError, match="expects input"):
        model.apply({"params": params}, jnp.zeros((1, 64, 80)))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        grid_shape(frames=8, num_mel_bins=128, patch_size=16, fstride=10, tstride=10)
    with pytest.raises(ValueError, match=r"64 mel bins is smaller than one 128x2 patch"):
        grid_shape(frames=8, num_mel_bins=64, patch_size=(128, 2), fstride=128, tstride=2)


def _with_pos(params, pos):
    return {**params, "pos_embed": jnp.asarray(pos)}


@pytest.mark.slow
def test_runtime_posemb_shorter_input():
    """A shorter input uses the first time columns of the position grid (method "prefix")."""
    long = AST(frames=128, fstride=10, tstride=10, **MINI)  # grid 12 x 12
    short = long.clone(frames=64)                             # grid 12 x 5
    params = _init(long)
    pos = np.asarray(params["pos_embed"])
    grid = pos[0, 2:].reshape(12, 12, 64)[:, :5].reshape(1, 60, 64)
    x = _fbank(2, 64)
    got = jax.jit(long.apply)({"params": params}, x)
    want = short.apply({"params": _with_pos(params, np.concatenate([pos[:, :2], grid], 1))},
                       x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_runtime_posemb_longer_input():
    """A longer input interpolates the time axis bilinearly, like torch (align_corners=False)."""
    torch = pytest.importorskip("torch")
    base = AST(frames=128, fstride=10, tstride=10, **MINI)  # grid 12 x 12
    longer = base.clone(frames=256)                          # grid 12 x 25
    params = _init(base)
    pos = np.asarray(params["pos_embed"])
    grid = torch.from_numpy(pos[0, 2:].copy().reshape(12, 12, 64)).permute(2, 0, 1)[None]
    grid = torch.nn.functional.interpolate(grid, size=(12, 25), mode="bilinear",
                                           align_corners=False)
    grid = grid[0].permute(1, 2, 0).reshape(1, 300, 64).numpy()
    x = _fbank(1, 256)
    got = jax.jit(base.apply)({"params": params}, x)
    want = longer.apply({"params": _with_pos(params, np.concatenate([pos[:, :2], grid], 1))},
                        x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_no_dist_token():
    # The model's own initialiser (one block keeps its compilation short).
    model = AST(frames=64, dist_token=False, **dict(MINI, depth=1))
    params = _init(model, real=True)
    assert "dist_token" not in params and model.num_prefix == 1
    chex.assert_shape(params["pos_embed"], (1, 1 + 12 * 5, 64))
    out = jax.jit(model.apply)({"params": params}, _fbank(2, 64))
    chex.assert_shape(out, (2, 5))
    chex.assert_tree_all_finite(out)


@pytest.mark.slow
def test_bfloat16_close_to_float32():
    model = AST(frames=96, fstride=16, tstride=16, **MINI)
    params = _init(model)
    x = _fbank(2, 96)
    ref = jax.jit(model.apply)({"params": params}, x)
    bf16 = model.clone(dtype=jnp.bfloat16)
    out = jax.jit(bf16.apply)({"params": params}, x)
    chex.assert_type(out, jnp.float32)  # logits are returned in float32
    chex.assert_tree_all_finite(out)
    # Parameters stay float32 whatever the compute dtype.
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(bf16)))
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(out - ref).max()) <= 0.05 * scale + 0.02
    assert not np.array_equal(np.asarray(out), np.asarray(ref))  # bf16 really was used


def test_dropout_only_in_train_mode():
    model = AST(frames=64, dropout=0.5, **MINI)
    params = _init(model)
    x = _fbank(2, 64)
    plain = model.clone(dropout=0.0).apply({"params": params}, x)
    evals = model.apply({"params": params}, x)  # train=False is the default
    np.testing.assert_array_equal(evals, plain)
    train = jax.jit(model.apply, static_argnames="train")
    a = train({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    b = train({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    chex.assert_tree_all_finite((a, b))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, x, train=True)  # needs a "dropout" rng


@pytest.mark.slow
def test_prefix_only_last_block_keeps_the_logits():
    """The last block computes only CLS / DIST (the head reads nothing else): same logits as
    the full block (trace_source turns the shortcut off), and its MACs are not counted."""
    from fast_ast_jax import bench
    model = create_ast("tiny", width=32, depth=2, num_heads=2, mlp_dim=64, num_mel_bins=32,
                       frames=64, num_classes=5)
    assert model.prefix_only_last_block()
    full = model.clone(trace_source=True)
    assert not full.prefix_only_last_block()
    # The last block never reduces: a schedule's entry for it is ignored.
    pruned = model.clone(prune_keep_rate=0.5, prune_layers=(1,), tome_r="blocks:0,4")
    assert pruned.prefix_only_last_block() and pruned.token_plan()[-1].keep is None
    assert bench.ast_macs(pruned) == bench.ast_macs(model)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 64, 32), dtype=np.float32))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    got = jax.jit(model.apply)({"params": params}, x)
    want, _ = jax.jit(lambda p, x: full.apply(p, x, mutable=["intermediates"]))(
            {"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert bench.ast_macs(model).total < bench.ast_macs(full).total


def test_gelu_exact_matches_jax_gelu():
    from fast_ast_jax.models.ast import gelu_exact
    x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(gelu_exact(x)),
                               np.asarray(jax.nn.gelu(x, approximate=False)), atol=1e-6)
