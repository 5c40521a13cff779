"""PNG maps of ToMe merge groups and TopK kept patches."""
from __future__ import annotations

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest

from fast_ast_jax import viz
from fast_ast_jax.models.ast import create_ast

GRID = (2, 4)  # f_dim x t_dim


def _pixel(img, grid, f, t):
    """RGB at the centre of token cell (f, t); image row 0 is the highest frequency."""
    h, w = img.shape[:2]
    row = int((grid[0] - f - 0.5) * h / grid[0])
    col = int((t + 0.5) * w / grid[1])
    return img[row, col, :3]


def _two_group_source():
    # CLS, DIST, then group A = time columns 0-1, group B = time columns 2-3.
    patches = np.arange(8).reshape(GRID)
    source = np.zeros((4, 10))
    source[0, 0] = source[1, 1] = 1
    source[2, 2 + patches[:, :2].ravel()] = 1
    source[3, 2 + patches[:, 2:].ravel()] = 1
    return source


def test_merge_map_colours_groups(tmp_path):
    spec = np.zeros((100, 64))  # flat spectrogram: only the overlay differs
    path = viz.merge_map_png(spec, _two_group_source(), grid=GRID,
                             path=tmp_path / "sub" / "merge.png", size=(400, 100))
    img = mpimg.imread(path)
    assert img.shape[:2] == (100, 400)
    a1, a2 = _pixel(img, GRID, 0, 0), _pixel(img, GRID, 1, 1)
    b1, b2 = _pixel(img, GRID, 0, 2), _pixel(img, GRID, 1, 3)
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    np.testing.assert_allclose(b1, b2, atol=1e-6)
    assert np.abs(a1 - b1).max() > 0.1
    np.testing.assert_array_equal(viz.merge_groups(_two_group_source(), grid=GRID),
                                  [[2, 2, 3, 3], [2, 2, 3, 3]])


def test_group_colors_distinct():
    colors = viz.group_colors(np.arange(200))
    diffs = np.abs(colors[:, None] - colors[None]).max(-1)
    assert np.all(diffs[~np.eye(200, dtype=bool)] > 1e-3)
    assert np.all(np.abs(colors[1:] - colors[:-1]).max(-1) > 0.2)  # neighbours differ


def test_prune_map_kept_vs_pruned(tmp_path):
    spec = np.ones((100, 64))
    path = viz.prune_map_png(spec, np.array([0, 5, -1]), grid=GRID,
                             path=tmp_path / "prune.png", size=(400, 100))
    img = mpimg.imread(path)
    assert img.shape[:2] == (100, 400)
    kept = [_pixel(img, GRID, 0, 0), _pixel(img, GRID, 1, 1)]  # patches 0 and 5
    pruned = [_pixel(img, GRID, 0, 1), _pixel(img, GRID, 1, 3)]
    assert min(k.sum() for k in kept) > max(p.sum() for p in pruned) + 0.5
    with pytest.raises(ValueError, match="outside"):
        viz.prune_map_png(spec, np.array([8]), grid=GRID, path=tmp_path / "bad.png")


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="one example"):
        viz.merge_map_png(np.zeros((100, 64)), np.zeros((2, 4, 10)), grid=GRID,
                          path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="frames, mel"):
        viz.merge_map_png(np.zeros((1, 100, 64)), _two_group_source(), grid=GRID,
                          path=tmp_path / "x.png")


@pytest.mark.slow
def test_maps_from_model(tmp_path):
    kw = dict(num_classes=3, width=32, depth=3, num_heads=2, mlp_dim=64, frames=100,
              num_mel_bins=64, fstride=16, tstride=10)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 100, 64))
    model = create_ast("tiny", **kw, tome_r=8, prune_keep_rate=0.6, prune_layers=(0, 1),
                       trace_source=True)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                mutable=["intermediates"]))(params, x)
    inter = state["intermediates"]
    grid = model.grid()
    source = np.asarray(inter["source"][0][0])
    p1 = viz.merge_map_png(x[0], source, grid=grid, path=tmp_path / "m.png")
    kept = inter["prune_kept_0"][0]  # one pruning block: indices are original patches
    p2 = viz.prune_map_png(x[0], kept[0], grid=grid, path=tmp_path / "p.png")
    for p in (p1, p2):
        assert mpimg.imread(p).shape[:2] == (256, 1024)
    # Every surviving group holds at least one patch; pruned patches have no group.
    held = source[:, 2:].sum(0)
    assert held.sum() == inter["sizes"][0][0].sum() - 2


def test_pruned_patches_have_no_group():
    source = _two_group_source()
    source[3, 2 + 7] = 0  # patch 7 (f=1, t=3) held by no token
    groups = viz.merge_groups(source, grid=GRID)
    assert groups[1, 3] == -1 and groups[0, 3] == 3
    np.testing.assert_array_equal(viz.group_colors(np.array([-1])), [[0, 0, 0]])
