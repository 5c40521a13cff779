"""Patch geometry of every AST-shaped model, packed row and feature map: the (frequency,
time) shape of a patch and the grid of patches over an input.

The ground floor under models/, packing.py, data/ and the inference tools: it knows
numbers, not modules, so each of them asks it the same question the same way.
"""
from __future__ import annotations

import dataclasses
import numbers


def patch_shape(patch_size) -> tuple[int, int]:
    """(frequency bins, time frames) of one patch from a `patch_size` field: an int p (a p x
    p square, AST's 16) or a (frequency, time) pair (e.g. SSAST's (128, 2) frame patches,
    which span every mel bin and 2 frames; a list from JSON metadata is a pair too)."""
    pair = (patch_size,) if isinstance(patch_size, numbers.Integral) else tuple(patch_size)
    if len(pair) == 1:  # a square; ml_collections parses --config.model.patch_size=16 to (16,)
        pair = pair * 2
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 and v > 0 for v in pair):
        raise ValueError(f"patch_size={patch_size!r}: give an int > 0 (a square patch) or a "
                         "(frequency bins, time frames) pair of ints > 0, e.g. (128, 2)")
    return int(pair[0]), int(pair[1])


def patch_field(patch_size) -> int | tuple[int, int]:
    """The one stored form of a `patch_size` field: an int for a square patch (what every
    checkpoint holds that was written before patches were pairs, so those still resume and
    compare equal), else the (frequency, time) tuple."""
    ph, pw = patch_shape(patch_size)
    return ph if ph == pw else (ph, pw)


def check_same_patch(*, weights, model, where: str) -> None:
    """Raise ValueError unless weights made with patch `weights` fit a model with patch
    `model` (both `patch_size` fields): the conv kernel and what every token means depend
    on it, so no pretrained weights carry over to another patch."""
    (wh, ww), (mh, mw) = patch_shape(weights), patch_shape(model)
    if (wh, ww) != (mh, mw):
        raise ValueError(f"{where} holds weights for {wh}x{ww} patches, the model has {mh}x"
                         f"{mw} patches (patch_size={model!r}); use patch_size={weights!r}, or "
                         "train that patch from scratch or from a masked pretraining "
                         "(model.name 'mae') with it")


def grid_shape(*, frames: int, num_mel_bins: int, patch_size, fstride: int,
               tstride: int) -> tuple[int, int]:
    """(f_dim, t_dim): number of patches along frequency and time (no padding), for a
    `patch_size` int or (frequency, time) pair (`patch_shape`)."""
    ph, pw = patch_shape(patch_size)
    if frames < pw or num_mel_bins < ph:
        raise ValueError(f"input of {frames} frames x {num_mel_bins} mel bins is smaller "
                         f"than one {ph}x{pw} patch ({ph} mel bins x {pw} frames)")
    return (num_mel_bins - ph) // fstride + 1, (frames - pw) // tstride + 1


@dataclasses.dataclass(frozen=True)
class Patching:
    """How a (frames, bins) fbank is cut into tokens: the patch (`size`, an int or a
    (frequency, time) pair, `patch_shape`) and its (frequency, time) strides, as one value
    (a packed batch's patches are the model's)."""

    size: int | tuple[int, int] = 16
    fstride: int = 16
    tstride: int = 16

    @property
    def frames(self) -> int:
        """Frames one patch spans: the shortest input."""
        return patch_shape(self.size)[1]

    @property
    def dim(self) -> int:
        """Values per flattened patch: bins x frames of one patch."""
        ph, pw = patch_shape(self.size)
        return ph * pw

    def grid(self, *, frames: int, num_mel_bins: int) -> tuple[int, int]:
        """(f_dim, t_dim) patches over an input of `frames` x `num_mel_bins` (`grid_shape`)."""
        return grid_shape(frames=frames, num_mel_bins=num_mel_bins, patch_size=self.size,
                          fstride=self.fstride, tstride=self.tstride)
