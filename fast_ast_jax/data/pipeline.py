"""Batching pipeline: features on the host, per-epoch shuffle, per-host shard, fixed shapes.

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
`teacher_probs(logits, tau=, multilabel=)`, i.e. sigmoid(logits / tau) per class for
multi-label tasks and softmax(logits / tau) over classes for single-label ones, with tau
the distillation temperature (config.distill.tau). A mixed clip gets the convex combination
lam * p1 + (1 - lam) * p2 of its two clips' predictions, with the labels' weight
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
round; with its teacher predictions), so batches stay full and remain a pure function of (seed,
epoch, index): a resumed run sees exactly the batches an uninterrupted one would. A skipped
eval clip is masked out (mask 0), so it counts nowhere. With `cache` on, every clip is
featurised up front (progress bar), so bad clips are all found and reported before the
first step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fast_ast_jax.audio import augment
from fast_ast_jax.audio.fbank_jax import pad_waves, samples_for_frames
from fast_ast_jax.audio.features import features
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError
from fast_ast_jax.data import source_ids
from fast_ast_jax.data.core import BadClips, host_share, save_cache
from fast_ast_jax.data.loader import Loadable


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation (all off by default). See fast_ast_jax.audio.augment."""

    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0  # probability of mixing an example with a random other one
    mixup_alpha: float = 10.0
    noise: bool = False

    def __post_init__(self):
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup={self.mixup} is a probability; use a value in [0, 1]")
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"mask widths freqm={self.freqm}, timem={self.timem} must be >= 0")


def target(label, *, num_classes: int) -> np.ndarray:
    """A source example's label -> (num_classes,) float32: one-hot of an int label, a
    multi-hot vector as given."""
    if np.ndim(label) == 0:
        y = np.zeros(num_classes, np.float32)
        y[int(label)] = 1.0
        return y
    return np.asarray(label, np.float32)


def teacher_probs(logits: np.ndarray, *, tau: float, multilabel: bool) -> np.ndarray:
    """Teacher predictions at temperature tau: (..., C) logits -> (..., C) float32.

    multilabel: sigmoid(logits / tau) per class; otherwise softmax(logits / tau) over the
    last axis. The classes a top-k teacher file does not store read as its fill logit
    (-1000), i.e. probability 0 at any usual tau.
    """
    if not tau > 0:
        raise ValueError(f"config.distill.tau={tau} is a temperature; use a value > 0")
    z = np.asarray(logits, np.float64) / tau
    if multilabel:
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # overflow-free sigmoid
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


class _TeacherRows:
    """Teacher predictions (`teacher_probs`) of the source examples, row i = example i,
    computed per row on demand: teacher files of large datasets hold millions of rows,
    which are neither copied nor converted up front."""

    def __init__(self, logits: np.ndarray, order: list[int], *, tau: float,
                 multilabel: bool):
        self.logits, self.order = logits, np.asarray(order, np.int64)
        self.tau, self.multilabel = tau, multilabel
        teacher_probs(np.zeros(1), tau=tau, multilabel=multilabel)  # check tau now

    def __getitem__(self, i: int) -> np.ndarray:
        return teacher_probs(self.logits[self.order[i]], tau=self.tau,
                             multilabel=self.multilabel)


def teacher_rows(teacher, source, *, tau: float, multilabel: bool) -> _TeacherRows:
    """The teacher predictions at tau (`teacher_probs`) of every example of `source`, row i
    = example i, from teacher logits (distill.TeacherLogits); checks first that the labels
    agree and that every clip id has logits."""
    teacher.check_labels(source.labels)
    ids = source_ids(source)
    teacher.check_ids(ids)
    return _TeacherRows(teacher.logits, [teacher.index(cid) for cid in ids], tau=tau,
                        multilabel=multilabel)


class Pipeline(Loadable):
    """Features + batches over one source.

    Args:
        source: random-access source (fast_ast_jax.data).
        frontend: turns waveforms into (target_frames, bins) normalised features.
        batch_size: global batch size (all hosts); each host yields its
            batch_size / process_count slice.
        train: shuffle per epoch, drop the last partial batch, augment; otherwise keep the
            source order and pad the last batch (mask = 0).
        seed: shuffle / augmentation seed.
        augment: training augmentation.
        cache: keep every clip's features in memory after the first computation.
        cache_dir: also store them in an .npz there, named by a hash of `cache_key` (which
            must identify the source, e.g. its config as JSON) and the front-end.
        process_index, process_count: this host's shard (default: from jax).
        on_bad_clip: "skip" or "fail" (see the module docstring).
        teacher: distill.TeacherLogits; its labels must equal the source's and every clip
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
        self.bad_clips = BadClips(on_bad_clip)
        self.process_index, self.local_batch = host_share(
            batch_size, what="batch_size", process_index=process_index,
            process_count=process_count)
        if train and len(source) < batch_size:
            raise ValueError(f"training set of {len(source)} examples is smaller than one "
                             f"batch ({batch_size}); lower config.batch_size")
        if source.sample_rate != frontend.sample_rate:
            raise ValueError(f"source audio is at {source.sample_rate} Hz but the front-end "
                             f"expects {frontend.sample_rate} Hz")
        if waves and cache_dir is not None:
            raise ValueError("config.data.cache_dir stores features, but with "
                             "config.frontend.on_device=True the loader ships waveforms; "
                             "set config.data.cache_dir='' (data.cache keeps them in memory)")
        self.source, self.frontend, self.train, self.seed = source, frontend, train, seed
        self.waves, self.worker_count = waves, worker_count
        self.augment = augment
        self.batch_size = batch_size
        self.num_classes = len(source.labels)
        # row i = teacher predictions (C,) of example i
        self._teacher = None if teacher is None else teacher_rows(
            teacher, source, tau=teacher_tau, multilabel=teacher_multilabel)
        self.on_bad_clip = on_bad_clip
        # index -> (features, target), or None for a bad clip.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray] | None] | None = (
            {} if cache else None)
        if cache:
            self._fill_cache(cache_dir, cache_key)

    # -- examples ---------------------------------------------------------------------------

    def _compute(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ex = self.source[index]
        if self.waves:  # the device computes the features (fbank_jax.device_features)
            wave = np.asarray(ex["audio"], np.float32)[:self._wave_samples]
            return wave, target(ex["label"], num_classes=self.num_classes)
        # Dither (off by default) is drawn once per clip, so cached features stay valid.
        rng = np.random.default_rng([self.seed, index]) if self.frontend.dither > 0 else None
        x = np.asarray(features(ex["audio"], frontend=self.frontend, rng=rng), np.float32)
        return x, target(ex["label"], num_classes=self.num_classes)

    def _checked(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """`_compute`, or None (recorded in bad_clips) for a bad clip under "skip"."""
        try:
            return self._compute(index)
        except AudioError as e:
            if index not in self.bad_clips:
                self.bad_clips.record(index, e)
                tqdm.write(f"warning: skipping bad clip {index}: {e}")
            return None

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(frames, bins) features and (C,) target of source example `index`; None if the
        clip is bad and skipped (see `on_bad_clip`)."""
        if self._cache is None:
            return self._checked(index)
        if index not in self._cache:
            self._cache[index] = self._checked(index)
        return self._cache[index]

    def good_example(self, index: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """(i, example(i)) for i = `index` or the next index in source order (wrapping)
        whose clip is good; the example is computed once (without the cache, computing it
        again to use it would double the decoding and fbank work)."""
        n = len(self.source)
        for k in range(n):
            ex = self.example((index + k) % n)
            if ex is not None:
                return (index + k) % n, ex
        raise AudioError(f"all {n} clips of the source are bad, e.g. "
                         f"{next(iter(self.bad_clips.values()))}")

    def _fill_cache(self, cache_dir, cache_key: str) -> None:
        path = None
        if cache_dir is not None:
            key = hashlib.sha1((cache_key + self.frontend.features_json()).encode()
                               ).hexdigest()[:16]
            path = Path(cache_dir) / f"features-{key}.npz"
            if path.is_file():
                with np.load(path) as f:
                    xs, ys, bad = f["x"], f["y"], f["bad"] if "bad" in f else []
                    reasons = f["reasons"] if "reasons" in f else []
                if len(xs) == len(self.source):
                    if len(bad) and self.on_bad_clip == "fail":
                        raise AudioError(f"{path} records {len(bad)} bad clip(s), e.g. "
                                         f"{reasons[0]}; config.data.on_bad_clip='skip' "
                                         "skips them")
                    self.bad_clips.update({int(i): str(r) for i, r in zip(bad, reasons)})
                    self._cache = {i: (xs[i], ys[i]) for i in range(len(xs))}
                    self._cache.update({i: None for i in self.bad_clips})
                    self.bad_clips.report(total=len(self.source), train=self.train)
                    return
        desc = (f"{'waveforms' if self.waves else 'features'} "
                f"({'train' if self.train else 'eval'})")
        for i in tqdm(range(len(self.source)), desc=desc, leave=False):
            self.example(i)
        self.bad_clips.report(total=len(self.source), train=self.train)
        if path is not None:
            shape = (self.frontend.target_frames, self.frontend.num_mel_bins)
            cached = [self._cache[i] or (np.zeros(shape, np.float32),
                                         np.zeros(self.num_classes, np.float32))
                      for i in range(len(self.source))]
            save_cache(path, x=np.stack([x for x, _ in cached]),
                       y=np.stack([y for _, y in cached]),
                       bad=np.asarray(sorted(self.bad_clips), np.int64),
                       reasons=np.asarray([self.bad_clips[i] for i in sorted(self.bad_clips)],
                                          dtype=str))

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
        fill = (0.0 - self.frontend.mean) / (2 * self.frontend.std)
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
                ts.append(None if self._teacher is None else self._teacher[i])
                mask.append(float(ok))
                continue
            i, (x, y) = self.good_example(i)
            t = None if self._teacher is None else self._teacher[i]
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
                    y, y2 = np.concatenate([y, t]), np.concatenate([y2, self._teacher[other]])
                x, y = augment.mixup(x, y, x2, y2, rng=rng, alpha=aug.mixup_alpha)
                if t is not None:
                    y, t = y[:self.num_classes], y[self.num_classes:]
            x = augment.spec_augment(x, freqm=aug.freqm, timem=aug.timem, fill=fill,
                                     rng=rng)
            if aug.noise:
                x = augment.noise_and_roll(x, rng=rng)
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
        if self._teacher is not None:
            batch["teacher_probs"] = np.stack(ts).astype(np.float32)
        return batch
