"""ElasticAST data pipeline: native-length, variable-hop clips packed into fixed rows.

Instead of padding or cropping every clip to `target_frames` (data.pipeline), each clip keeps
its own length (capped at `max_frames`) and, in training, a hop drawn per clip from `hops_ms`
(ElasticAST's resolution elasticity: the fbank is recomputed at that hop). Clips are
patchified and packed greedily, in order, into `rows` rows of `max_tokens` tokens with at
most `max_slots` clips per row (fast_ast_jax.packing), so every batch has the same shapes
and one compiled program serves the whole dataset.

Batches (dicts of NumPy arrays):
    patches (R, L, p*p) float32, segment_ids (R, L) int32, positions (R, L, 2) int32,
    slot_index (R, S) int32 (source example index per slot, -1 = empty),
    y (R, S, C) float32 targets per slot, mask (R, S) float32 (1 = a real clip).

Every batch is a pure function of (seed, epoch, batch index): resuming needs only the data
position. Single host only (the packing of a step is not split across hosts).

Bad clips (audio that raises `AudioError`) are found when an epoch is planned, since
planning reads every clip's length: with on_bad_clip="skip" they are left out of the plan
(counted in `bad_clips`, index -> message, reported once), so batches stay a pure function
of the position; "fail" raises naming the file.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from fast_ast_jax import packing
from fast_ast_jax.audio import augment as augment_lib
from fast_ast_jax.audio.fbank import fbank, num_frames
from fast_ast_jax.audio.features import normalize
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError
from fast_ast_jax.data.pipeline import (BAD_CLIP_POLICIES, Augment, batch_positions,
                                        in_background)


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """The static shape of a packed batch and the patch grid."""

    rows: int = 4
    max_tokens: int = 512
    max_slots: int = 16
    patch_size: int = 16
    fstride: int = 16
    tstride: int = 16

    def __post_init__(self):
        if min(self.rows, self.max_tokens, self.max_slots) < 1:
            raise ValueError(f"PackSpec rows={self.rows}, max_tokens={self.max_tokens}, "
                             f"max_slots={self.max_slots} must all be >= 1")


class PackedPipeline:
    """Packed batches over one random-access source (see the module docstring).

    Args:
        source: random-access source (fast_ast_jax.data).
        frontend: fbank parameters and normalisation; its frame_shift_ms is replaced by the
            hop of each clip and its target_frames is not used.
        spec: rows, token budget, slots and patch grid of every batch.
        train: shuffle per epoch, draw a hop per clip, token dropout, augment; otherwise
            source order with the first hop of `hops_ms`.
        hops_ms: frame shifts (ms) to draw from (ElasticAST: 10 to 40 ms); a hop longer
            than the front-end's window also widens the window to the hop.
        max_frames: length cap in frames at each clip's hop (ElasticAST's audio_length);
            longer clips are cut at the end, shorter ones keep their length.
        token_dropout: fraction of each clip's tokens dropped in training (ElasticAST 0.1).
        seed: shuffle / hop / dropout / augmentation seed.
        augment: SpecAugment (timem is scaled by 10 ms / hop, as ElasticAST) and mixup off.
        cache: keep every (clip, hop) fbank in memory; otherwise recompute per batch.
            Planning an epoch needs every clip's length, so it reads each clip's audio
            once (lengths are always cached: one int per clip and hop).
        on_bad_clip: "skip" or "fail" (see the module docstring).
    """

    def __init__(self, source, *, frontend: FrontEnd, spec: PackSpec, train: bool,
                 hops_ms: Sequence[float] = (10.0,), max_frames: int = 1024,
                 token_dropout: float = 0.0, seed: int = 0, augment: Augment = Augment(),
                 cache: bool = True, on_bad_clip: str = "skip"):
        if on_bad_clip not in BAD_CLIP_POLICIES:
            raise ValueError(f"config.data.on_bad_clip={on_bad_clip!r}: use one of "
                             f"{BAD_CLIP_POLICIES}")
        if source.sample_rate != frontend.sample_rate:
            raise ValueError(f"source audio is at {source.sample_rate} Hz but the front-end "
                             f"expects {frontend.sample_rate} Hz")
        if not hops_ms:
            raise ValueError("hops_ms is empty: give at least one frame shift in ms")
        if augment.mixup > 0:
            raise ValueError("mixup is not supported with packing (clips of different "
                             "lengths and hops cannot be mixed); set augment.mixup=0")
        if max_frames < spec.patch_size:
            raise ValueError(f"max_frames={max_frames} is shorter than one patch "
                             f"({spec.patch_size} frames)")
        self.source, self.frontend, self.spec, self.train = source, frontend, spec, train
        self.hops_ms = tuple(float(h) for h in hops_ms)
        self.max_frames, self.token_dropout, self.seed = max_frames, token_dropout, seed
        self.augment, self.on_bad_clip = augment, on_bad_clip
        self.bad_clips: dict[int, str] = {}
        self.num_classes = len(source.labels)
        # FrontEnd requires window >= hop, so a hop longer than the window widens the window
        # to the hop (ElasticAST keeps 25 ms windows and skips samples between frames).
        self._frontends = {h: dataclasses.replace(
            frontend, frame_shift_ms=h, frame_length_ms=max(frontend.frame_length_ms, h))
            for h in self.hops_ms}
        self._cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] | None = (
            {} if cache else None)
        self._frames: dict[tuple[int, float], int] = {}
        self._plans: dict[int, list[list[tuple[int, float]]]] = {}

    # -- clips ------------------------------------------------------------------------------

    def _target(self, label) -> np.ndarray:
        if np.ndim(label) == 0:
            y = np.zeros(self.num_classes, np.float32)
            y[int(label)] = 1.0
            return y
        return np.asarray(label, np.float32)

    def clip(self, index: int, hop_ms: float) -> tuple[np.ndarray, np.ndarray]:
        """Un-normalised native-length fbank (frames, bins) at `hop_ms` and target (C,).

        Capped at max_frames; clips shorter than one patch are zero-padded to one patch.
        """
        key = (index, hop_ms)
        if self._cache is None or key not in self._cache:
            ex = self.source[index]
            fe = self._frontends[hop_ms]
            rng = np.random.default_rng([self.seed, index]) if fe.dither > 0 else None
            needed = fe.window_size + (self.max_frames - 1) * fe.hop_size
            wave = np.asarray(ex["audio"])[:needed]
            if len(wave) < fe.window_size:
                feats = np.zeros((0, fe.num_mel_bins), np.float32)
            else:
                feats = np.asarray(fbank(wave, frontend=fe, rng=rng), np.float32)
            feats = feats[:self.max_frames]
            if len(feats) < self.spec.patch_size:
                feats = np.concatenate([feats, np.zeros(
                    (self.spec.patch_size - len(feats), feats.shape[1]), np.float32)])
            out = (feats, self._target(ex["label"]))
            if self._cache is None:
                return out
            self._cache[key] = out
        return self._cache[key]

    def num_frames(self, index: int, hop_ms: float) -> int:
        """len(self.clip(index, hop_ms)[0]) from the audio length, without an fbank."""
        key = (index, hop_ms)
        if key not in self._frames:
            if self._cache is not None and key in self._cache:
                self._frames[key] = len(self._cache[key][0])
            else:
                fe = self._frontends[hop_ms]
                n = num_frames(len(self.source[index]["audio"]), window_size=fe.window_size,
                               hop_size=fe.hop_size)
                self._frames[key] = max(min(n, self.max_frames), self.spec.patch_size)
        return self._frames[key]

    def _num_tokens(self, index: int, hop: float) -> int | None:
        """Tokens of the clip at `hop` (after token dropout); None for a skipped bad clip."""
        if index in self.bad_clips:
            return None
        try:
            frames = self.num_frames(index, hop)
        except AudioError as e:
            if self.on_bad_clip == "fail":
                raise AudioError(f"{e} [example {index}; config.data.on_bad_clip='skip' "
                                 "skips bad clips]") from e
            self.bad_clips[index] = str(e)
            return None
        f_dim = (self.frontend.num_mel_bins - self.spec.patch_size) // self.spec.fstride + 1
        t_dim = (frames - self.spec.patch_size) // self.spec.tstride + 1
        n = f_dim * t_dim
        return max(1, int(n * (1.0 - self.token_dropout))) if self.train else n

    # -- plan -------------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[list[tuple[int, float]]]:
        """Batches of the epoch as lists of (source index, hop); a pure function of it."""
        if epoch not in self._plans:
            n = len(self.source)
            if self.train:
                rng = np.random.default_rng([self.seed, epoch, 0])
                order = rng.permutation(n)
                hops = [self.hops_ms[i] for i in rng.integers(len(self.hops_ms), size=n)]
            else:
                order, hops = np.arange(n), [self.hops_ms[0]] * n
            items = [(int(i), h) for i, h in zip(order, hops)]
            known_bad = len(self.bad_clips)
            lengths = [self._num_tokens(i, h) for i, h in items]
            items = [it for it, n in zip(items, lengths) if n is not None]
            lengths = [n for n in lengths if n is not None]
            if not items:
                raise AudioError(f"all {n} clips of the source are bad, e.g. "
                                 f"{next(iter(self.bad_clips.values()))}")
            if len(self.bad_clips) > known_bad:
                tqdm.write(f"{len(self.bad_clips)} of {n} {'train' if self.train else 'eval'} "
                           f"clips are bad and skipped, e.g. "
                           f"{next(iter(self.bad_clips.values()))}")
            groups = packing.greedy_batches(lengths, rows=self.spec.rows,
                                            max_tokens=self.spec.max_tokens,
                                            max_slots=self.spec.max_slots)
            if self.train and len(groups) > 1:
                groups = groups[:-1]  # drop the last, partly filled step, as drop_last
            self._plans = {epoch: [[items[j] for j in g] for g in groups]}
        return self._plans[epoch]

    def steps(self, epoch: int = 0) -> int:
        return len(self.plan(epoch))

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / all token places over the epoch's batches (1 = no padding)."""
        real = sum(self._num_tokens(i, h) for step in self.plan(epoch) for i, h in step)
        return real / (self.steps(epoch) * self.spec.rows * self.spec.max_tokens)

    # -- batches ----------------------------------------------------------------------------

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Packed batch `index` of `epoch` (see the module docstring for its arrays)."""
        items = self.plan(epoch)[index]
        fill = (0.0 - self.frontend.mean) / (2 * self.frontend.std)
        samples, targets = [], []
        for j, (i, hop) in enumerate(items):
            feats, y = self.clip(i, hop)
            rng = np.random.default_rng([self.seed, epoch, index, j, 1])
            x = normalize(feats, frontend=self.frontend)
            if self.train:
                timem = int(self.augment.timem * self.frontend.frame_shift_ms / hop)
                x = augment_lib.spec_augment(x, freqm=self.augment.freqm, timem=timem,
                                             fill=fill, rng=rng)
                if self.augment.noise:
                    x = augment_lib.noise_and_roll(x, rng=rng)
            patches, pos = packing.patchify(x, patch_size=self.spec.patch_size,
                                            fstride=self.spec.fstride,
                                            tstride=self.spec.tstride)
            if self.train and self.token_dropout > 0:
                keep = packing.token_dropout(len(patches), rate=self.token_dropout, rng=rng)
                patches, pos = patches[keep], pos[keep]
            samples.append((patches, pos))
            targets.append(y)
        packed = packing.pack(samples, rows=self.spec.rows, max_tokens=self.spec.max_tokens,
                              max_slots=self.spec.max_slots)
        # Slots name source examples (not positions in this batch) so outputs can be
        # matched to the dataset; empty slots stay -1.
        source_index = packed.slot_values(np.asarray([i for i, _ in items], np.int32),
                                          fill=-1)
        return {**packed.arrays(), "slot_index": source_index,
                "y": packed.slot_values(np.stack(targets)),
                "mask": (packed.slot_index >= 0).astype(np.float32)}

    def iterate(self, *, epoch: int = 0, index: int = 0, prefetch: int = 2
                ) -> Iterator[tuple[dict[str, np.ndarray], tuple[int, int]]]:
        """Yield (batch, position after it) from (epoch, index) on; eval: one pass."""
        items = ((self.batch(e, i), nxt) for e, i, nxt in batch_positions(
            epoch=epoch, index=index, steps=self.steps, train=self.train))
        return in_background(items, prefetch=prefetch)
