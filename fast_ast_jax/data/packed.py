"""ElasticAST batches: native-length, variable-hop clips packed into fixed rows.

Instead of padding or cropping every clip to `target_frames` (data.pipeline), each clip
keeps its own length (capped at `max_frames`) and, in training, a hop drawn per clip from
`hops_ms` (ElasticAST's resolution elasticity: the fbank is recomputed at that hop), and
loses a fraction of its tokens (token dropout). Clips are patchified and packed greedily,
in order, into `rows` rows of `max_tokens` tokens with at most `max_slots` clips per row
(fast_ast_jax.packing), so every batch has the same shapes and one compiled program serves
the whole dataset. The clips themselves (decoding, fbank at each hop, cache, bad clips,
targets, teacher predictions, SpecAugment and noise) come from a clip store (data.clips).

Packing: the clip order of an epoch is dealt round-robin into `rows` streams (clip k goes
to stream k mod rows); each stream is packed greedily, in order, into rows, and step k is
row k of every stream. So the packing is a function of (seed, epoch, rows) only, not of the
number of hosts: on several hosts, host p builds rows [p * rows / hosts, (p + 1) * rows /
hosts) of every step, i.e. packs and featurises only the clips of its own streams (its
slice of the clip order), and the global batch is the same as on one host. A training
epoch has as many steps as its shortest stream has rows (the tails of longer streams are
left out, as a dropped last batch; so is the last, partly filled row of each stream); an
eval pass as many as its longest (shorter streams get empty rows, mask 0).

Batches (dicts of NumPy arrays, this host's rows R_host = rows / hosts):
    patches (R_host, L, p*p) float32, segment_ids (R_host, L) int32, positions
    (R_host, L, 2) int32, slot_index (R_host, S) int32 (source example index per slot, -1 =
    empty), y (R_host, S, C) float32 targets per slot, mask (R_host, S) float32 (1 = a real
    clip); with a teacher also teacher_probs (R_host, S, C) float32, the teacher predictions
    of each slot's clip (0 in empty slots).

Every batch is a pure function of (seed, epoch, batch index): resuming needs only the data
position. Planning needs every clip's length, so every host reads every clip's length
(audio length only, no fbank).

Bad clips (audio that raises `AudioError`) are found when an epoch is planned, since
planning reads every clip's length (or before, when `cache_dir` featurises every clip up
front): with on_bad_clip="skip" they are left out of the plan (counted in `bad_clips`,
index -> message, reported once), so batches stay a pure function of the position; "fail"
raises naming the file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from fast_ast_jax import packing
from fast_ast_jax.audio.augment import Augment, check_no_mixup
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.clips import ClipStore
from fast_ast_jax.data.loader import Loadable, host_share
from fast_ast_jax.patches import Patching


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """The static shape of a packed batch (rows x max_tokens tokens, at most max_slots clips
    a row) and how its clips are cut into patches (the model's `patches.Patching`)."""

    rows: int = 4
    max_tokens: int = 512
    max_slots: int = 16
    patching: Patching = Patching()

    def __post_init__(self):
        if min(self.rows, self.max_tokens, self.max_slots) < 1:
            raise ValueError(f"PackSpec rows={self.rows}, max_tokens={self.max_tokens}, "
                             f"max_slots={self.max_slots} must all be >= 1")


class PackedPipeline(Loadable):
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
        cache_dir: with `cache`, featurise every clip at every hop up front and store the
            fbanks in one .npz per hop there, named by a hash of `cache_key` (which must
            identify the source, e.g. its config as JSON), the front-end, hop and cap
            (data.clips); a later run (or host) loads them instead.
        process_index, process_count: this host's rows (default: from jax).
        teacher: teacher_logits.TeacherLogits; batches then carry each slot's teacher predictions
            `teacher_probs` at `teacher_tau` (sigmoid if `teacher_multilabel`, else softmax;
            labels and clip ids checked here, as data.pipeline.Pipeline does).
        on_bad_clip: "skip" or "fail" (see the module docstring).
        worker_count: grain worker processes building batches (0 = in this process;
            data.loader).
    """

    def __init__(self, source, *, frontend: FrontEnd, spec: PackSpec, train: bool,
                 hops_ms: Sequence[float] = (10.0,), max_frames: int = 1024,
                 token_dropout: float = 0.0, seed: int = 0, augment: Augment = Augment(),
                 cache: bool = True, cache_dir: str | os.PathLike | None = None,
                 cache_key: str = "", process_index: int | None = None,
                 process_count: int | None = None, teacher=None, teacher_tau: float = 1.0,
                 teacher_multilabel: bool = False, on_bad_clip: str = "skip",
                 worker_count: int = 0):
        check_no_mixup(augment.mixup)
        if max_frames < spec.patching.frames:
            raise ValueError(f"max_frames={max_frames} is shorter than one patch "
                             f"({spec.patching.frames} frames)")
        self.process_index, self.local_rows = host_share(
            spec.rows, what="config.elastic.rows" if train else
            "the eval rows (config.eval_batch_size, 0 = config.elastic.rows)",
            process_index=process_index, process_count=process_count)
        # Clips keep their length up to max_frames; one shorter than a patch is padded.
        self.clips = ClipStore(
            source, frontend=frontend, train=train, max_frames=max_frames,
            min_frames=spec.patching.frames, hops_ms=hops_ms, seed=seed, augment=augment,
            cache=cache, cache_dir=cache_dir, cache_key=cache_key, on_bad_clip=on_bad_clip,
            teacher=teacher, teacher_tau=teacher_tau, teacher_multilabel=teacher_multilabel)
        self.bad_clips = self.clips.bad_clips
        self.source, self.frontend, self.spec, self.train = source, frontend, spec, train
        self.hops_ms = self.clips.hops_ms
        self.max_frames, self.token_dropout, self.seed = max_frames, token_dropout, seed
        self.augment, self.worker_count = augment, worker_count
        self.num_classes = len(source.labels)
        self._plans: dict[int, list[list[list[tuple[int, float]]]]] = {}
        if cache and cache_dir:
            self.clips.featurise_all()

    # -- clips ------------------------------------------------------------------------------

    def clip(self, index: int, hop_ms: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Un-normalised native-length fbank (frames, bins) at `hop_ms` and target (C,),
        or None for a skipped bad clip. Capped at max_frames; clips shorter than one patch
        are zero-padded to one patch."""
        return self.clips.clip(index, hop_ms)

    def num_frames(self, index: int, hop_ms: float) -> int | None:
        """len(self.clip(index, hop_ms)[0]) from the audio length, without an fbank."""
        return self.clips.frames(index, hop_ms)

    def _num_tokens(self, index: int, hop: float) -> int | None:
        """Tokens of the clip at `hop` (after token dropout); None for a skipped bad clip."""
        frames = self.num_frames(index, hop)
        if frames is None:
            return None
        f_dim, t_dim = self.spec.patching.grid(frames=frames,
                                               num_mel_bins=self.frontend.num_mel_bins)
        n = f_dim * t_dim
        return max(1, int(n * (1.0 - self.token_dropout))) if self.train else n

    # -- plan -------------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[list[list[tuple[int, float]]]]:
        """Steps of the epoch, each a list of `rows` global rows of (source index, hop);
        a pure function of the epoch (see the module docstring)."""
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
                raise self.bad_clips.all_bad(n)
            if len(self.bad_clips) > known_bad:
                self.bad_clips.report(total=n, train=self.train)
            rows = self.spec.rows
            streams = []
            for r in range(rows):
                members = range(r, len(items), rows)
                assignment = packing.assign_rows([lengths[j] for j in members],
                                                 max_tokens=self.spec.max_tokens,
                                                 max_slots=self.spec.max_slots)
                streams.append([[items[members[j]] for j in row] for row in assignment])
            if self.train:  # drop each stream's last, partly filled row (as drop_last)
                steps = min(len(s) - (len(s) > 1) for s in streams)
            else:
                steps = max(len(s) for s in streams)
            if steps == 0:
                raise ValueError(f"{len(items)} training clips cannot fill one step of "
                                 f"{rows} rows (config.elastic.rows); lower rows or use more "
                                 "clips")
            self._plans = {epoch: [[s[k] if k < len(s) else [] for s in streams]
                                   for k in range(steps)]}
        return self._plans[epoch]

    def steps(self, epoch: int = 0) -> int:
        return len(self.plan(epoch))

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / all token places over the epoch's batches (1 = no padding)."""
        real = sum(self._num_tokens(i, h) for step in self.plan(epoch) for row in step
                   for i, h in row)
        return real / (self.steps(epoch) * self.spec.rows * self.spec.max_tokens)

    # -- batches ----------------------------------------------------------------------------

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """This host's rows of packed batch `index` of `epoch` (see the module docstring)."""
        first = self.process_index * self.local_rows
        rows = self.plan(epoch)[index][first:first + self.local_rows]
        teacher = self.clips.teacher
        samples, sources, targets, teachers, assignment = [], [], [], [], []
        for r, row in enumerate(rows, start=first):
            assignment.append([])
            for s, (i, hop) in enumerate(row):
                feats, y = self.clip(i, hop)
                # Seeded by the global (row, slot): the same on any number of hosts.
                rng = np.random.default_rng([self.seed, epoch, index, r, s, 1])
                x = self.clips.normalize(feats)
                if self.train:
                    x = self.clips.augmented(x, rng=rng, hop_ms=hop)
                p = self.spec.patching
                patches, pos = packing.patchify(x, patch_size=p.size, fstride=p.fstride,
                                                tstride=p.tstride)
                if self.train and self.token_dropout > 0:
                    keep = packing.token_dropout(len(patches), rate=self.token_dropout,
                                                 rng=rng)
                    patches, pos = patches[keep], pos[keep]
                assignment[-1].append(len(samples))
                samples.append((patches, pos))
                sources.append(i)
                targets.append(y)
                if teacher is not None:
                    teachers.append(teacher[i])
        packed = packing.pack_rows(samples, assignment, max_tokens=self.spec.max_tokens,
                                   max_slots=self.spec.max_slots,
                                   dim=self.spec.patching.dim)
        per_clip = lambda values: np.asarray(values, np.float32).reshape(
            len(samples), self.num_classes)
        # Slots name source examples (not positions in this batch) so outputs can be
        # matched to the dataset; empty slots stay -1.
        batch = {**packed.arrays(),
                 "slot_index": packed.slot_values(np.asarray(sources, np.int32), fill=-1),
                 "y": packed.slot_values(per_clip(targets)),
                 "mask": (packed.slot_index >= 0).astype(np.float32)}
        if teacher is not None:
            batch["teacher_probs"] = packed.slot_values(per_clip(teachers))
        return batch
