"""ElasticAST sequence packing on the host (NumPy): variable-length spectrograms -> rows.

Each sample's patches (any clip length, any hop) are laid end to end into rows of a fixed
token budget, so one compiled program serves a whole dataset of mixed lengths and no compute
goes into padding (docs/REFERENCES.md §6; the big_vision / Flax wmt conventions):

- `segment_ids` (R, L) int32: 1..S for the samples of a row, 0 for padding;
- `positions` (R, L, 2) int32: each token's (frequency, time) patch index;
- `slot_index` (R, S) int32: which input sample sits in slot s of row r (-1 = empty), so
  per-sample outputs (R, S, ...) map back to the original order.

Packing is greedy and order-preserving (a new row starts when the next sample would not fit
in the token budget or the row has no free slot), like ElasticAST. A sample longer than the
budget is an error, never a silent cut.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fast_ast_jax.patches import grid_shape, patch_shape


def patchify(fbank: np.ndarray, *, patch_size: int | tuple[int, int] = 16, fstride: int = 16,
             tstride: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (frames, mel) fbank into patches of (ph, pw) = patch_shape(patch_size)
    (frequency bins, frames), frequency-major like AST's conv.

    Returns:
        patches: (f_dim * t_dim, ph * pw) float32; the vector of a patch is ordered
            (p_freq, p_time), i.e. index = p_freq * pw + p_time, so a linear layer on it
            equals AST's conv with kernel (ph, pw, 1, W).
        positions: (f_dim * t_dim, 2) int32 (frequency index, time index).
    """
    frames, bins = fbank.shape
    ph, pw = patch_shape(patch_size)
    f_dim, t_dim = grid_shape(frames=frames, num_mel_bins=bins, patch_size=patch_size,
                              fstride=fstride, tstride=tstride)
    spec = np.ascontiguousarray(np.asarray(fbank, np.float32).T)  # (F, T): height = freq
    sf, st = spec.strides
    windows = np.lib.stride_tricks.as_strided(
        spec, shape=(f_dim, t_dim, ph, pw),
        strides=(sf * fstride, st * tstride, sf, st), writeable=False)
    patches = windows.reshape(f_dim * t_dim, ph * pw).copy()
    ff, tt = np.meshgrid(np.arange(f_dim), np.arange(t_dim), indexing="ij")
    positions = np.stack([ff.ravel(), tt.ravel()], axis=1).astype(np.int32)
    return patches, positions


def token_dropout(num_tokens: int, *, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the tokens kept by ElasticAST's training token dropout.

    Keeps max(1, int(n * (1 - rate))) tokens chosen at random; the kept tokens keep their
    original order (their positions travel with them, so order does not change the model's
    output except through ToMe's alternate split, where the natural order is better).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"token dropout rate={rate} must be in [0, 1)")
    keep = max(1, int(num_tokens * (1.0 - rate)))
    return np.sort(rng.permutation(num_tokens)[:keep])


def assign_rows(lengths: Sequence[int], *, max_tokens: int,
                max_slots: int) -> list[list[int]]:
    """Greedy, order-preserving packing: sample indices per row.

    Raises:
        ValueError: naming the sample, if one sample alone exceeds `max_tokens`.
    """
    rows: list[list[int]] = []
    used = max_tokens + 1  # forces a new row for the first sample
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"sample {i} has {n} tokens, more than the row budget "
                             f"max_tokens={max_tokens}; raise the budget or crop the clip")
        if n <= 0:
            raise ValueError(f"sample {i} has no tokens")
        if used + n > max_tokens or len(rows[-1]) >= max_slots:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """A fixed-shape packed batch: R rows x L tokens x S sample slots."""

    patches: np.ndarray  # (R, L, P) float32, 0 at padding
    segment_ids: np.ndarray  # (R, L) int32, 1..S per sample, 0 = padding
    positions: np.ndarray  # (R, L, 2) int32 (frequency, time) patch index, 0 at padding
    slot_index: np.ndarray  # (R, S) int32 index into the input samples, -1 = empty slot

    @property
    def efficiency(self) -> float:
        """Real tokens / all token positions."""
        return float((self.segment_ids > 0).mean())

    @property
    def num_samples(self) -> int:
        return int((self.slot_index >= 0).sum())

    def arrays(self) -> dict[str, np.ndarray]:
        """The model input of `models.elastic.ElasticAST` (a dict of the four arrays)."""
        return dataclasses.asdict(self)

    def slot_values(self, values: np.ndarray, fill=0) -> np.ndarray:
        """Arrange per-sample values (N, ...) into slots (R, S, ...) (`fill` where empty)."""
        values = np.asarray(values)
        out = np.full(self.slot_index.shape + values.shape[1:], fill, values.dtype)
        valid = self.slot_index >= 0
        out[valid] = values[self.slot_index[valid]]
        return out


def pack(samples: Sequence[tuple[np.ndarray, np.ndarray]], *, rows: int, max_tokens: int,
         max_slots: int) -> PackedBatch:
    """Pack (patches (n_i, P), positions (n_i, 2)) samples into exactly `rows` rows.

    Raises:
        ValueError: if the samples need more than `rows` rows, or one exceeds the budget.
    """
    if not samples:
        raise ValueError("nothing to pack: no samples")
    assignment = assign_rows([len(p) for p, _ in samples], max_tokens=max_tokens,
                             max_slots=max_slots)
    if len(assignment) > rows:
        raise ValueError(f"{len(samples)} samples need {len(assignment)} rows of "
                         f"{max_tokens} tokens, more than rows={rows}")
    return pack_rows(samples, assignment + [[]] * (rows - len(assignment)),
                     max_tokens=max_tokens, max_slots=max_slots,
                     dim=samples[0][0].shape[1])


def pack_rows(samples: Sequence[tuple[np.ndarray, np.ndarray]],
              assignment: Sequence[Sequence[int]], *, max_tokens: int, max_slots: int,
              dim: int) -> PackedBatch:
    """Lay samples out as `assignment` says: row r holds samples assignment[r] in order
    (an empty list is an empty row); slot_index refers to positions in `samples`.

    dim: patch vector size P (needed when every row is empty).
    Raises:
        ValueError: if a row overflows max_tokens or max_slots.
    """
    rows = len(assignment)
    patches = np.zeros((rows, max_tokens, dim), np.float32)
    segment_ids = np.zeros((rows, max_tokens), np.int32)
    positions = np.zeros((rows, max_tokens, 2), np.int32)
    slot_index = np.full((rows, max_slots), -1, np.int32)
    for r, members in enumerate(assignment):
        if len(members) > max_slots or sum(len(samples[i][0]) for i in members) > max_tokens:
            raise ValueError(f"row {r} holds {len(members)} samples of "
                             f"{sum(len(samples[i][0]) for i in members)} tokens, more than "
                             f"max_slots={max_slots} / max_tokens={max_tokens}")
        start = 0
        for s, i in enumerate(members):
            p, pos = samples[i]
            n = len(p)
            patches[r, start:start + n] = p
            positions[r, start:start + n] = pos
            segment_ids[r, start:start + n] = s + 1
            slot_index[r, s] = i
            start += n
    return PackedBatch(patches, segment_ids, positions, slot_index)


def greedy_batches(lengths: Sequence[int], *, rows: int, max_tokens: int,
                   max_slots: int) -> list[list[int]]:
    """Split a stream of samples into consecutive batches that each fit `rows` rows.

    Returns lists of sample indices (order preserved); every list can be given to `pack`.
    """
    batches, current, row_members = [], [], assign_rows(lengths, max_tokens=max_tokens,
                                                        max_slots=max_slots)
    for members in row_members:
        current.append(members)
        if len(current) == rows:
            batches.append([i for row in current for i in row])
            current = []
    if current:
        batches.append([i for row in current for i in row])
    return batches
