"""The clips of one source through one front-end: what the padded (data.pipeline) and the
packed (data.packed) pipelines share. They keep only their batching (which clips form a
batch and how they are laid out); a `ClipStore` owns everything about single clips:

- decoding (`source[i]`, whose audio must be at the front-end's sample rate) and the cut:
  a clip keeps the samples of its first `max_frames` frames (all of them for None);
- features: the un-normalised log-mel fbank at one of the store's hops (a hop longer than
  the front-end's window widens the window to the hop), at most `max_frames` frames,
  zero-padded at the end to at least `min_frames`; or, with `waves`, the cut waveform
  itself (the accelerator makes the features, audio.fbank_jax). Dither, when on, is drawn
  once per clip from (seed, clip index), so cached features stay valid;
- targets (`target`) and teacher predictions (`teacher_probs` at tau, row by row);
- bad clips (`BadClips`: a clip whose audio raises `AudioError` is skipped and recorded,
  or raises, under the `on_bad_clip` policy);
- the cache: every (clip, hop) in memory after its first computation, and with
  `cache_dir` one .npz per hop there (`featurise_all`), which a later run or another host
  reads instead of the audio;
- normalisation, and the per-clip training augmentation (SpecAugment then noise; mixup
  mixes two clips, which is batching).

Cache files are named by a hash of the cache key (which must identify the source, e.g.
its config as JSON), the fields of the hop's front-end that change the fbank, the frame
limits, the dither seed and `CACHE_FORMAT`. A file of an earlier layout (features-*.npz,
packed-*.npz) is never read: its clips are featurised again into a new file; one whose
clip count differs from the source's is featurised again and overwritten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from fast_ast_jax import atomic
from fast_ast_jax.audio.augment import Augment, noise_and_roll, spec_augment
from fast_ast_jax.audio.fbank import fbank, num_frames
from fast_ast_jax.audio.fbank_jax import samples_for_frames
from fast_ast_jax.audio.features import normalize, pad_or_crop, pad_value
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError
from fast_ast_jax.data import source_ids

BAD_CLIP_POLICIES = ("skip", "fail")
CACHE_FORMAT = "clips-1"  # part of the cache files' key: a new layout gets new names
_CACHE_ARRAYS = ["bad", "feats", "offsets", "reasons", "y"]


class BadClips(dict):
    """index -> message of the source clips whose audio raised `AudioError`, under one
    `on_bad_clip` policy: "fail" raises at once naming the clip, "skip" records it (and
    warns once per clip)."""

    def __init__(self, policy: str):
        if policy not in BAD_CLIP_POLICIES:
            raise ValueError(f"config.data.on_bad_clip={policy!r}: use one of "
                             f"{BAD_CLIP_POLICIES}")
        super().__init__()
        self.policy = policy

    def record(self, index: int, error: AudioError) -> None:
        """Raise (policy "fail") or record the clip (policy "skip")."""
        if self.policy == "fail":
            raise AudioError(f"{error} [example {index}; config.data.on_bad_clip='skip' "
                             "skips bad clips]") from error
        if index not in self:
            tqdm.write(f"warning: skipping bad clip {index}: {error}")
        self[index] = str(error)

    def report(self, *, total: int, train: bool) -> None:
        """One line: how many of the `total` clips are skipped, with the first reason."""
        if self:
            tqdm.write(f"{len(self)} of {total} {'train' if train else 'eval'} clips are bad "
                       f"and skipped, e.g. {next(iter(self.values()))}")

    def all_bad(self, total: int) -> AudioError:
        """The error to raise when none of the `total` clips is good."""
        return AudioError(f"all {total} clips of the source are bad, e.g. "
                          f"{next(iter(self.values()))}")


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
    = example i, from teacher logits (teacher_logits.TeacherLogits); checks first that the labels
    agree and that every clip id has logits."""
    teacher.check_labels(source.labels)
    ids = source_ids(source)
    teacher.check_ids(ids)
    return _TeacherRows(teacher.logits, [teacher.index(cid) for cid in ids], tau=tau,
                        multilabel=multilabel)


def _save(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache .npz atomically (hosts sharing a cache_dir may write it at once)."""
    with atomic.replacing(path) as tmp:
        np.savez(tmp, **arrays)


class ClipStore:
    """The clips of one source through one front-end (see the module docstring).

    Args:
        source: random-access source (fast_ast_jax.data).
        frontend: fbank parameters and normalisation.
        train: names the split in reports and progress bars.
        max_frames: keep at most this many frames of a clip (None: all).
        min_frames: zero-pad shorter fbanks at the end to this many frames.
        hops_ms: the frame shifts (ms) clips are featurised at (default: the front-end's).
        waves: a clip is its cut waveform, not its fbank (no cache_dir then).
        seed: dither seed.
        augment: the per-clip training augmentation (`augmented`).
        cache: keep every (clip, hop) in memory after its first computation.
        cache_dir, cache_key: where `featurise_all` stores each hop's clips, and what
            identifies the source there.
        on_bad_clip: "skip" or "fail" (`BadClips`).
        teacher: teacher_logits.TeacherLogits; its labels must equal the source's and every clip
            id of the source must have logits (checked here, before any feature work).
        teacher_tau, teacher_multilabel: `teacher_probs` of the teacher rows.
    """

    def __init__(self, source, *, frontend: FrontEnd, train: bool, max_frames: int | None,
                 min_frames: int = 0, hops_ms: Sequence[float] | None = None,
                 waves: bool = False, seed: int = 0, augment: Augment = Augment(),
                 cache: bool = True, cache_dir: str | os.PathLike | None = None,
                 cache_key: str = "", on_bad_clip: str = "skip", teacher=None,
                 teacher_tau: float = 1.0, teacher_multilabel: bool = False):
        self.bad_clips = BadClips(on_bad_clip)
        if source.sample_rate != frontend.sample_rate:
            raise ValueError(f"source audio is at {source.sample_rate} Hz but the front-end "
                             f"expects {frontend.sample_rate} Hz")
        if waves and cache_dir is not None:
            raise ValueError("config.data.cache_dir stores features, but with "
                             "config.frontend.on_device=True the loader ships waveforms; "
                             "set config.data.cache_dir='' (data.cache keeps them in memory)")
        hops = (frontend.frame_shift_ms,) if hops_ms is None else tuple(map(float, hops_ms))
        if not hops:
            raise ValueError("hops_ms is empty: give at least one frame shift in ms")
        self.source, self.frontend, self.train, self.seed = source, frontend, train, seed
        self.max_frames, self.min_frames, self.waves = max_frames, min_frames, waves
        self.augment, self.hops_ms = augment, hops
        self.num_classes = len(source.labels)
        # FrontEnd requires window >= hop, so a hop longer than the window widens the window
        # to the hop (ElasticAST keeps 25 ms windows and skips samples between frames).
        self.frontends = {h: dataclasses.replace(
            frontend, frame_shift_ms=h, frame_length_ms=max(frontend.frame_length_ms, h))
            for h in hops}
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_key = cache_key
        # row i = teacher predictions (C,) of example i
        self.teacher = None if teacher is None else teacher_rows(
            teacher, source, tau=teacher_tau, multilabel=teacher_multilabel)
        self._cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] | None = (
            {} if cache else None)
        self._frames: dict[tuple[int, float], int] = {}  # always kept: one int per clip

    # -- clips ------------------------------------------------------------------------------

    def _example(self, index: int) -> dict | None:
        """source[index], or None (recorded in bad_clips) for a bad clip under "skip"."""
        try:
            return self.source[index]
        except AudioError as e:
            self.bad_clips.record(index, e)
            return None

    def clip(self, index: int, hop_ms: float | None = None
             ) -> tuple[np.ndarray, np.ndarray] | None:
        """(x, y) of source example `index`, or None for a bad clip under "skip".

        x: un-normalised fbank (frames, bins) at `hop_ms` (default: the first of hops_ms),
        min_frames <= frames <= max_frames (frames of a clip between the two: its own);
        with `waves` (samples,) float32, the samples of max_frames frames at most.
        y: (C,) float32 target.
        """
        hop = self.hops_ms[0] if hop_ms is None else hop_ms
        key = (index, hop)
        if index in self.bad_clips:
            return None
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        ex = self._example(index)
        if ex is None:
            return None
        fe = self.frontends[hop]
        wave = np.asarray(ex["audio"])
        if self.max_frames is not None:
            wave = wave[:samples_for_frames(self.max_frames, frontend=fe)]
        if self.waves:
            x = wave.astype(np.float32, copy=False)
        else:
            rng = np.random.default_rng([self.seed, index]) if fe.dither > 0 else None
            x = fbank(wave, frontend=fe, rng=rng)[:self.max_frames]
            if len(x) < self.min_frames:
                x = pad_or_crop(x, target_frames=self.min_frames)
        out = (x, target(ex["label"], num_classes=self.num_classes))
        if self._cache is not None:
            self._cache[key] = out
        return out

    def frames(self, index: int, hop_ms: float) -> int | None:
        """len(clip(index, hop_ms)[0]) from the audio's length, without an fbank; None for
        a bad clip under "skip"."""
        key = (index, hop_ms)
        if key not in self._frames:
            if index in self.bad_clips:
                return None
            if self._cache is not None and key in self._cache:
                self._frames[key] = len(self._cache[key][0])
            else:
                ex = self._example(index)
                if ex is None:
                    return None
                fe = self.frontends[hop_ms]
                n = num_frames(len(ex["audio"]), window_size=fe.window_size,
                               hop_size=fe.hop_size)
                if self.max_frames is not None:
                    n = min(n, self.max_frames)
                self._frames[key] = max(n, self.min_frames)
        return self._frames[key]

    # -- the cache, up front ----------------------------------------------------------------

    def featurise_all(self) -> None:
        """Every clip at every hop into the memory cache (a store built with `cache`;
        progress bar), so bad clips are all found and reported now: read from the hop's
        file in cache_dir when there is one, else computed (and stored there)."""
        known = len(self.bad_clips)
        for hop in self.hops_ms:
            path = self._cache_path(hop)
            if path is not None and self._read(path, hop):
                continue
            desc = (f"{'waveforms' if self.waves else 'features'} "
                    f"({'train' if self.train else 'eval'}, {hop:g} ms)")
            for i in tqdm(range(len(self.source)), desc=desc, leave=False):
                self.clip(i, hop)
            if path is not None:
                self._write(path, hop)
        if len(self.bad_clips) > known:
            self.bad_clips.report(total=len(self.source), train=self.train)

    def _cache_path(self, hop: float) -> Path | None:
        if self.cache_dir is None:
            return None
        fe = self.frontends[hop]
        key = json.dumps([CACHE_FORMAT, self.cache_key, fe.features_json(), self.max_frames,
                          self.min_frames, self.seed if fe.dither > 0 else None])
        return self.cache_dir / f"clips-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"

    def _read(self, path: Path, hop: float) -> bool:
        """Load the clips of `hop` from `path`; False if it is absent or holds another
        number of clips."""
        n = len(self.source)
        if not path.is_file():
            return False
        with np.load(path) as f:
            if sorted(f.files) != _CACHE_ARRAYS or len(f["offsets"]) != n + 1:
                return False
            feats, offsets, ys = f["feats"], f["offsets"], f["y"]
            bad = {int(i): str(r) for i, r in zip(f["bad"], f["reasons"])}
        if bad and self.bad_clips.policy == "fail":
            raise AudioError(f"{path} records {len(bad)} bad clip(s), e.g. "
                             f"{next(iter(bad.values()))}; config.data.on_bad_clip='skip' "
                             "skips them")
        self.bad_clips.update(bad)
        for i in range(n):
            if i not in bad:
                self._cache[(i, hop)] = (feats[offsets[i]:offsets[i + 1]], ys[i])
        return True

    def _write(self, path: Path, hop: float) -> None:
        empty = (np.zeros((0, self.frontend.num_mel_bins), np.float32),
                 np.zeros(self.num_classes, np.float32))
        clips = [self.clip(i, hop) or empty for i in range(len(self.source))]
        bad = sorted(self.bad_clips)
        _save(path, feats=np.concatenate([x for x, _ in clips]),
              offsets=np.cumsum([0] + [len(x) for x, _ in clips]),
              y=np.stack([y for _, y in clips]), bad=np.asarray(bad, np.int64),
              reasons=np.asarray([self.bad_clips[i] for i in bad], dtype=str))

    # -- model input ------------------------------------------------------------------------

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(frames, bins) fbank -> normalised model input (audio.features.normalize)."""
        return normalize(x, frontend=self.frontend)

    def augmented(self, x: np.ndarray, *, rng: np.random.Generator,
                  hop_ms: float | None = None) -> np.ndarray:
        """SpecAugment, then noise + roll if on, of one normalised clip (frames, bins).

        hop_ms: the clip's hop when it may differ from the front-end's; time masks are then
        timem * frame_shift_ms / hop_ms frames wide (the same duration, as ElasticAST).
        """
        aug = self.augment
        timem = aug.timem
        if hop_ms is not None:
            timem = int(aug.timem * self.frontend.frame_shift_ms / hop_ms)
        x = spec_augment(x, freqm=aug.freqm, timem=timem, fill=pad_value(self.frontend),
                         rng=rng)
        if aug.noise:
            x = noise_and_roll(x, rng=rng)
        return x


def fbank_moments(source, *, frontend: FrontEnd, on_bad_clip: str, process_index: int = 0,
                  process_count: int = 1) -> np.ndarray:
    """(3,) float64 [cells, sum, sum of squares] of the un-normalised log-mel fbank of this
    host's clips of `source` (clips process_index, process_index + process_count, ...):
    every frame and bin of each whole clip, neither padded nor cropped, so padded and
    packed runs get the same statistics. Summed over the hosts they give the training
    set's mean and std (config.data.auto_stats). Bad clips follow `on_bad_clip`, as in the
    pipelines; dither is drawn with seed 0."""
    clips = ClipStore(source, frontend=frontend, train=True, max_frames=None, cache=False,
                      on_bad_clip=on_bad_clip)
    moments = np.zeros(3, np.float64)
    indices = range(process_index, len(source), process_count)
    for i in tqdm(indices, desc="fbank statistics (train)", leave=False):
        clip = clips.clip(i)
        if clip is not None:
            x = clip[0].astype(np.float64)
            moments += (x.size, x.sum(), np.square(x).sum())
    return moments
