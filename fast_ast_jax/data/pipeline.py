"""Padded batches: per-epoch shuffle, per-host shard, every clip cut or zero-padded to
`target_frames` (fixed shapes), mixup. The clips themselves (decoding, features on the
host, cache, bad clips, targets, teacher predictions, SpecAugment and noise) come from a
clip store (data.clips).

Every batch is a pure function of (seed, epoch, batch index), so the data position (epoch,
index-in-epoch) saved in a checkpoint is enough to resume the exact same sample order;
sources are random access. `iterate` reads batches through the grain loader
(data.loader): in-process with a background thread, or in `worker_count` processes.

Batches are dicts of NumPy arrays for this host:
    x (B_host, frames, bins) float32 normalised features;
    y (B_host, C) float32 targets (one-hot, multi-hot, or mixed);
    mask (B_host,) float32, 1 for real examples, 0 for padding (eval only pads);
    teacher_probs (B_host, C) float32 teacher predictions, when the pipeline has a teacher.
With `waves=True` (config.frontend.on_device) x is replaced by the clips' waveforms, and
the jitted step makes the features and augments them (fast_ast_jax.audio.augment_jax):
    wave (B_host, samples) float32, each clip cut to target_frames' worth of samples and
        zero-padded to that length; wave_len (B_host,) int32 its samples before padding.

Teacher targets and mixup: the batch carries teacher *predictions*, not logits:
`data.clips.teacher_probs(logits, tau=, multilabel=)`, i.e. sigmoid(logits / tau) per
class for multi-label tasks and softmax(logits / tau) over classes for single-label ones,
with tau the distillation temperature (config.distill.tau). A mixed clip gets the convex
combination lam * p1 + (1 - lam) * p2 of its two clips' predictions, with the labels' weight
lam ~ Beta(alpha, alpha): the mixture of the two teachers' answers, as the labels are the
mixture of the two ground truths. Mixing logits instead is not: logits 5 and -10 mixed at
lam = 1/2 give -2.5 (p = 0.08) where the mixed prediction is 0.5, and a top-k teacher
file's fill logit (-1000, classes outside one clip's top k) would turn every such class
into a hard 0 for the mixture. The loss (train.losses.kd_loss) consumes these
probabilities as they are. The predictions were computed once on the un-augmented clip
(`distill dump`), so SpecAugment and noise do not change them; CMKD's "consistent
teaching" instead runs the teacher online on the very same augmented input.

Bad clips (a source example whose audio raises `AudioError`: missing, empty, undecodable,
NaN samples) follow `on_bad_clip`: "fail" raises at once, naming the file; "skip" records
the clip in `bad_clips` (index -> message), warns once, and goes on. A skipped training
clip is replaced by the next good example in source order (index + 1, + 2, ... wrapping
round; with its teacher predictions), so batches stay full and remain a pure function of
(seed, epoch, index): a resumed run sees exactly the batches an uninterrupted one would.
A skipped eval clip is masked out (mask 0), so it counts nowhere. With `cache` on, every
clip is featurised up front (progress bar), so bad clips are all found and reported
before the first step.
"""
from __future__ import annotations

import os

import numpy as np

from fast_ast_jax.audio import augment
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.fbank_jax import pad_waves, samples_for_frames
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.clips import ClipStore
from fast_ast_jax.data.loader import Loadable, host_share


class Pipeline(Loadable):
    """Padded batches over the clips of one source (see the module docstring).

    Args:
        source: random-access source (fast_ast_jax.data).
        frontend: turns waveforms into (target_frames, bins) normalised features.
        batch_size: global batch size (all hosts); each host yields its
            batch_size / process_count slice.
        train: shuffle per epoch, drop the last partial batch, augment; otherwise keep the
            source order and pad the last batch (mask = 0).
        seed: shuffle / augmentation seed.
        augment: training augmentation.
        cache: featurise every clip up front and keep the features in memory.
        cache_dir: also store them in an .npz there, named by a hash of `cache_key` (which
            must identify the source, e.g. its config as JSON) and the front-end
            (data.clips).
        process_index, process_count: this host's shard (default: from jax).
        on_bad_clip: "skip" or "fail" (see the module docstring).
        teacher: teacher_logits.TeacherLogits; its labels must equal the source's and every clip
            id of the source must have logits (checked here, before any feature work).
            Batches then carry `teacher_probs` (see the module docstring).
        teacher_tau: distillation temperature the teacher predictions are taken at.
        teacher_multilabel: sigmoid (True: multi-label task, BCE loss) or softmax (False)
            teacher predictions; must match the loss (train.losses.kd_loss).
        waves: ship waveforms instead of features (see the module docstring); training
            augmentation then runs on the device, and `cache` keeps waveforms.
        worker_count: grain worker processes building batches (0 = in this process;
            data.loader).
    """

    def __init__(self, source, *, frontend: FrontEnd, batch_size: int, train: bool,
                 seed: int = 0, augment: Augment = Augment(), cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, cache_key: str = "",
                 process_index: int | None = None,
                 process_count: int | None = None, teacher=None,
                 teacher_tau: float = 1.0, teacher_multilabel: bool = False,
                 on_bad_clip: str = "skip", waves: bool = False, worker_count: int = 0):
        self.process_index, self.local_batch = host_share(
            batch_size, what="batch_size", process_index=process_index,
            process_count=process_count)
        if train and len(source) < batch_size:
            raise ValueError(f"training set of {len(source)} examples is smaller than one "
                             f"batch ({batch_size}); lower config.batch_size")
        # Clips are cut to target_frames and zero-padded to it: fixed shapes.
        self.clips = ClipStore(
            source, frontend=frontend, train=train, max_frames=frontend.target_frames,
            min_frames=frontend.target_frames, waves=waves, seed=seed, augment=augment,
            cache=cache, cache_dir=cache_dir, cache_key=cache_key, on_bad_clip=on_bad_clip,
            teacher=teacher, teacher_tau=teacher_tau, teacher_multilabel=teacher_multilabel)
        self.bad_clips = self.clips.bad_clips
        self.source, self.frontend, self.train, self.seed = source, frontend, train, seed
        self.waves, self.worker_count = waves, worker_count
        self.augment = augment
        self.batch_size = batch_size
        self.num_classes = len(source.labels)
        if cache:
            self.clips.featurise_all()

    # -- examples ---------------------------------------------------------------------------

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(frames, bins) normalised features (with `waves`: the clip's waveform) and (C,)
        target of source example `index`; None if the clip is bad and skipped (see
        `on_bad_clip`)."""
        clip = self.clips.clip(index)
        if clip is None or self.waves:
            return clip
        return self.clips.normalize(clip[0]), clip[1]

    def good_example(self, index: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """(i, example(i)) for i = `index` or the next index in source order (wrapping)
        whose clip is good; the example is computed once (without the cache, computing it
        again to use it would double the decoding and fbank work)."""
        n = len(self.source)
        for k in range(n):
            ex = self.example((index + k) % n)
            if ex is not None:
                return (index + k) % n, ex
        raise self.bad_clips.all_bad(n)

    # -- batches ----------------------------------------------------------------------------

    @property
    def _wave_samples(self) -> int:
        return samples_for_frames(self.frontend.target_frames, frontend=self.frontend)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def steps(self, epoch: int = 0) -> int:
        """Batches in `epoch` (the same for every epoch; data.packed's vary)."""
        return self.steps_per_epoch

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.source)
        if not self.train:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """This host's part of global batch `index` of `epoch` (pure function of both)."""
        order = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        order = order[self.process_index * self.local_batch:
                      (self.process_index + 1) * self.local_batch]
        teacher = self.clips.teacher
        shape = (0,) if self.waves else (self.frontend.target_frames,
                                         self.frontend.num_mel_bins)
        xs, ys, ts, mask = [], [], [], []
        for j, i in enumerate(order):
            i = int(i)
            if not self.train:
                ex = self.example(i)
                ok = ex is not None
                xs.append(ex[0] if ok else np.zeros(shape, np.float32))
                ys.append(ex[1] if ok else np.zeros(self.num_classes, np.float32))
                ts.append(None if teacher is None else teacher[i])
                mask.append(float(ok))
                continue
            i, (x, y) = self.good_example(i)
            t = None if teacher is None else teacher[i]
            if self.waves:  # augmented on the device (augment_jax.device_batch)
                xs.append(x)
                ys.append(y)
                ts.append(t)
                mask.append(1.0)
                continue
            rng = np.random.default_rng([self.seed, epoch, index, self.process_index, j])
            aug = self.augment
            if aug.mixup > 0 and rng.random() < aug.mixup:
                other, (x2, y2) = self.good_example(int(rng.integers(len(self.source))))
                if t is not None:  # mix teacher predictions with the labels' weight
                    y, y2 = np.concatenate([y, t]), np.concatenate([y2, teacher[other]])
                x, y = augment.mixup(x, y, x2, y2, rng=rng, alpha=aug.mixup_alpha)
                if t is not None:
                    y, t = y[:self.num_classes], y[self.num_classes:]
            x = self.clips.augmented(x, rng=rng)
            xs.append(x)
            ys.append(y)
            ts.append(t)
            mask.append(1.0)
        while len(xs) < self.local_batch:  # eval: pad the last batch
            xs.append(np.zeros(shape, np.float32))
            ys.append(np.zeros(self.num_classes, np.float32))
            ts.append(np.zeros(self.num_classes, np.float32))
            mask.append(0.0)
        inputs = (pad_waves(xs, samples=self._wave_samples) if self.waves
                  else {"x": np.stack(xs)})
        batch = {**inputs, "y": np.stack(ys), "mask": np.asarray(mask, np.float32)}
        if teacher is not None:
            batch["teacher_probs"] = np.stack(ts).astype(np.float32)
        return batch
