"""PNG maps of token reduction over the input spectrogram: ToMe groups, TopK kept patches.

Patches overlap when a stride is below the patch's side, so pixels cannot be mapped to
patches exactly (ToMe's own visualisation, arXiv 2210.09461, assumes a grid of disjoint
patches); the (f_dim, t_dim) token grid is instead stretched over the fbank image: cell
(f, t) covers the f-th band of mel bins (low frequencies at the bottom) and the t-th band
of frames.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

_DPI = 100


def merge_groups(source: np.ndarray, *, grid: tuple[int, int]) -> np.ndarray:
    """Group id of every original patch: (T, T0) 0/1 source -> (f_dim, t_dim) ints.

    The class-token columns (T0 - f_dim * t_dim leading columns) are dropped; a patch
    belongs to the current token whose source row holds it (argmax over rows), or is -1
    when no token holds it (pruned).
    """
    source = np.asarray(source)
    f_dim, t_dim = grid
    if source.ndim != 2:
        raise ValueError(f"source must be (tokens, original tokens) for one example, got "
                         f"shape {source.shape}; index the batch first")
    prefix = source.shape[1] - f_dim * t_dim
    if prefix < 0:
        raise ValueError(f"source has {source.shape[1]} original tokens, fewer than the "
                         f"{f_dim}x{t_dim} grid")
    patches = source[:, prefix:]
    groups = np.where(patches.max(axis=0) > 0, patches.argmax(axis=0), -1)
    return groups.reshape(f_dim, t_dim)


def group_colors(groups: np.ndarray) -> np.ndarray:
    """(...,) int group ids -> (..., 3) RGB in [0, 1]; distinct ids get distinct colours.

    Hues step by the golden ratio, so consecutive ids (neighbouring tokens) differ
    strongly; saturation and value alternate for more separation. Negative ids (patches
    no token holds) are black.
    """
    groups = np.asarray(groups)
    ids, inverse = np.unique(groups, return_inverse=True)
    palette = np.array([(0.0, 0.0, 0.0) if i < 0 else
                        colorsys.hsv_to_rgb((i * 0.6180339887) % 1.0, 0.95 if i % 2 else 0.6,
                                            1.0 if i % 3 else 0.8) for i in ids])
    return palette[inverse.reshape(groups.shape)]


def _figure(spectrogram: np.ndarray, size: tuple[int, int]):
    spectrogram = np.asarray(spectrogram, np.float32)
    if spectrogram.ndim != 2:
        raise ValueError(f"spectrogram must be (frames, mel), got shape {spectrogram.shape}")
    width, height = size
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    extent = (0, spectrogram.shape[0], 0, spectrogram.shape[1])
    ax.imshow(spectrogram.T, origin="lower", aspect="auto", cmap="gray", extent=extent,
              interpolation="nearest")
    return fig, ax, extent


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _check_grid(grid):
    f_dim, t_dim = grid
    if f_dim < 1 or t_dim < 1:
        raise ValueError(f"grid must be (f_dim, t_dim) >= 1, got {grid}")


def merge_map_png(spectrogram, source, *, grid: tuple[int, int], path,
                  size: tuple[int, int] = (1024, 256), alpha: float = 0.55) -> Path:
    """Draw each original patch in the colour of its ToMe merge group (black: pruned).

    Args:
        spectrogram: (frames, mel) fbank of one example.
        source: (T, T0) 0/1 source map of that example (`trace_source=True`).
        grid: (f_dim, t_dim) patch grid of the input.
        path: PNG file to write (parent folders are created).
        size: (width, height) of the image in pixels.
        alpha: opacity of the group colours over the spectrogram.

    Returns:
        The written path.
    """
    _check_grid(grid)
    groups = merge_groups(source, grid=grid)
    fig, ax, extent = _figure(spectrogram, size)
    ax.imshow(group_colors(groups), origin="lower", aspect="auto", extent=extent,
              alpha=alpha, interpolation="nearest")
    return _save(fig, path)


def prune_map_png(spectrogram, kept_patch_indices, *, grid: tuple[int, int], path,
                  size: tuple[int, int] = (1024, 256)) -> Path:
    """Show kept patches in colour over the spectrogram and pruned ones darkened.

    Args:
        spectrogram: (frames, mel) fbank of one example.
        kept_patch_indices: (k,) original patch indices (frequency-major, no class tokens),
            e.g. the `prune_kept_{i}` intermediate of a model's only pruning block;
            negative entries (fused tokens) are ignored.
        grid: (f_dim, t_dim) patch grid of the input.
        path: PNG file to write.
        size: (width, height) in pixels.

    Returns:
        The written path.
    """
    _check_grid(grid)
    f_dim, t_dim = grid
    kept = np.asarray(kept_patch_indices).reshape(-1)
    kept = kept[kept >= 0]
    if kept.size and kept.max() >= f_dim * t_dim:
        raise ValueError(f"kept patch index {kept.max()} outside the {f_dim}x{t_dim} grid")
    mask = np.zeros(f_dim * t_dim, bool)
    mask[kept] = True
    rgba = np.zeros((f_dim * t_dim, 4))
    rgba[mask] = (1.0, 0.55, 0.0, 0.35)  # kept: orange tint
    rgba[~mask] = (0.0, 0.0, 0.0, 0.8)  # pruned: darkened
    fig, ax, extent = _figure(spectrogram, size)
    ax.imshow(rgba.reshape(f_dim, t_dim, 4), origin="lower", aspect="auto", extent=extent,
              interpolation="nearest")
    return _save(fig, path)
