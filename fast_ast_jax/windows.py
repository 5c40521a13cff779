"""Sliding-window inference for clips longer than the trained input.

A model trained on `frontend.target_frames` frames (T) sees a long clip as windows of T
frames every `hop_frames` frames (default T // 2); the last window is padded like a short
training clip. Windows of all clips are streamed through the model in fixed-size batches,
so an hour-long file costs its waveform and its fbank (computed once) in memory plus one
batch of window features, never all of its windows at once. A clip of at most T frames is
exactly one window (the usual input).

An ElasticAST (packed, any-length model) is scored the same way with windows as long as
its packed row allows: a clip that fits is one window at its own length (packed alone into
one row, no padding frames), a longer one is cut into row-sized windows (`scorer`).

Aggregation over a clip's windows (documented in docs/RELIABILITY.md):
    single-label (softmax): softmax of the mean of the window logits;
    multi-label (sigmoid): per class, the max over windows of the sigmoid (an event heard
        anywhere in the clip is in the clip).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from fast_ast_jax import models, packing
from fast_ast_jax.audio.fbank import fbank, num_frames
from fast_ast_jax.audio.features import normalize
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import ElasticAST


@dataclasses.dataclass
class ClipScores:
    """scores (C,) aggregated; windows: (start_s, end_s, scores (C,)) per window."""

    scores: np.ndarray
    windows: list[tuple[float, float, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A model's forward over fixed-size batches of windows.

    Attributes:
        apply: (features (batch_size, T, bins), frames (batch_size,) real frames per
            window) -> logits (batch_size, C); always called with exactly batch_size rows.
        frontend: features of one window (T = target_frames: the window length).
        multi_label: sigmoid + max over windows, else softmax of mean logits.
        batch_size: windows per call.
    """

    apply: Callable[[np.ndarray, np.ndarray], np.ndarray]
    frontend: FrontEnd
    multi_label: bool
    batch_size: int = 8


def elastic_row(model: ElasticAST, bundle: Bundle) -> tuple[int, FrontEnd]:
    """(row tokens, window front-end) of an ElasticAST's inference, from its training
    config: rows of config.elastic.max_tokens (else its whole position table), the first
    evaluation hop, and windows (target_frames) as long as the longest clip whose patches
    fit one row and the position table."""
    e = bundle.config.get("elastic") if bundle.config is not None else None
    f_dim, t_max = model.grid
    tokens = int(e.max_tokens) if e is not None else f_dim * t_max
    t_dim = min(tokens // f_dim, t_max)
    if t_dim < 1:
        raise ValueError(f"a row of {tokens} tokens cannot hold one {f_dim}-patch column")
    fe = bundle.frontend
    hop = float(e.eval_hops_ms[0]) if e is not None else fe.frame_shift_ms
    return tokens, dataclasses.replace(
        fe, frame_shift_ms=hop, frame_length_ms=max(fe.frame_length_ms, hop),
        target_frames=(t_dim - 1) * model.tstride + model.patch_size)


def scorer(bundle: Bundle, *, batch_size: int = 8, **overrides: Any) -> Scorer:
    """The jitted fixed-batch forward of a loaded checkpoint, with model field `overrides`
    (e.g. tome_r=8). AST / CNN: windows of the trained length. ElasticAST: each window is
    packed alone into one row at its own length (tokens of padding frames never enter)."""
    model = bundle.model.clone(**overrides) if overrides else bundle.model
    params = bundle.params
    if not models.is_packed(model):
        forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
        return Scorer(apply=lambda x, frames: forward(params, x), frontend=bundle.frontend,
                      multi_label=bundle.multi_label, batch_size=batch_size)
    tokens, fe = elastic_row(model, bundle)
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False)[0][:, 0])

    def apply(x, frames):
        samples = [packing.patchify(w[:max(int(n), model.patch_size)],
                                    patch_size=model.patch_size, fstride=model.fstride,
                                    tstride=model.tstride) for w, n in zip(x, frames)]
        rows = packing.pack(samples, rows=len(x), max_tokens=tokens, max_slots=1)
        return forward(params, rows.arrays())

    return Scorer(apply=apply, frontend=fe, multi_label=bundle.multi_label,
                  batch_size=batch_size)


def window_starts(num_samples: int, *, frontend: FrontEnd, hop_frames: int) -> list[int]:
    """First frame of each window of a clip of `num_samples` samples.

    1 window when the clip has <= target_frames frames, else windows every `hop_frames`
    until one reaches the last frame.
    """
    if hop_frames <= 0:
        raise ValueError(f"hop_frames={hop_frames} must be > 0 (default: half a window)")
    frames = num_frames(num_samples, window_size=frontend.window_size,
                        hop_size=frontend.hop_size)
    extra = max(0, frames - frontend.target_frames)
    return [k * hop_frames for k in range(1 + -(-extra // hop_frames))]


@dataclasses.dataclass(frozen=True)
class _ClipFeatures:
    """A clip's normalised fbank (frames, bins), computed once, and its window starts."""

    feats: np.ndarray
    starts: list[int]
    duration: float


def _clip_features(wave: np.ndarray, *, frontend: FrontEnd, hop_frames: int) -> _ClipFeatures:
    wave = np.asarray(wave)
    starts = window_starts(len(wave), frontend=frontend, hop_frames=hop_frames)
    # Samples past the last window's last frame cannot change any window.
    needed = frontend.window_size + (starts[-1] + frontend.target_frames - 1) * frontend.hop_size
    return _ClipFeatures(feats=normalize(fbank(wave[:needed], frontend=frontend),
                                         frontend=frontend),
                         starts=starts, duration=len(wave) / frontend.sample_rate)


def clip_windows(clip: _ClipFeatures, *, frontend: FrontEnd
                 ) -> Iterator[tuple[float, float, np.ndarray, int]]:
    """(start_s, end_s, features (T, bins), real frames <= T) of each window of a clip;
    the last window ends at the clip's end. Frames are independent, so a window cut from
    the clip's fbank equals `features(wave[first:])` of its own samples (padding cells are
    normalised zeros, as there)."""
    window, feats = frontend.target_frames, clip.feats
    pad = normalize(np.zeros((1, feats.shape[1]), np.float32), frontend=frontend)
    for k, start in enumerate(clip.starts):
        first = start * frontend.hop_size
        # The last window reaches the end of the clip (a tail shorter than one frame hop
        # is not seen by any frame; a short clip is padded).
        t1 = clip.duration if k + 1 == len(clip.starts) else (
            first + frontend.window_size + (window - 1) * frontend.hop_size
        ) / frontend.sample_rate
        x = feats[start:start + window]
        n = len(x)
        if n < window:
            x = np.concatenate([x, np.repeat(pad, window - n, axis=0)])
        yield first / frontend.sample_rate, t1, x, n


def ordered_map(fn: Callable, items: Iterable, *, workers: int
                ) -> Iterator[tuple[Any, Any, Exception | None]]:
    """(item, fn(item) or None, exception or None) per item, in order, computed by
    `workers` threads at most 2 * workers items ahead of the consumer (bounded memory);
    workers=0 computes in the caller's thread."""
    if workers <= 0:
        for item in items:
            try:
                yield item, fn(item), None
            except Exception as e:  # reported to the caller with its item
                yield item, None, e
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        todo, ahead = iter(items), collections.deque()
        for item in itertools.islice(todo, 2 * workers):
            ahead.append((item, pool.submit(fn, item)))
        while ahead:
            item, future = ahead.popleft()
            for nxt in itertools.islice(todo, 1):
                ahead.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, future.result(), None
            except Exception as e:  # reported to the caller with its item
                yield item, None, e


def windowed_scores(waves: Iterable[np.ndarray], *, scorer: Scorer,
                    hop_frames: int | None = None, workers: int = 0) -> Iterator[ClipScores]:
    """Aggregated and per-window scores of each clip, in order.

    Windows of consecutive clips share batches, and every batch has scorer.batch_size rows
    (the last one zero-padded): one compilation for any number of clips and lengths, and a
    clip's scores do not depend on the clips batched with it.

    Args:
        waves: mono float32 waveforms at scorer.frontend.sample_rate (read lazily).
        scorer: the model (`scorer(bundle)`).
        hop_frames: frames between window starts (default T // 2).
        workers: threads computing features of the next clips while the model runs
            (0: in this thread).
    """
    frontend, batch_size, multi_label = scorer.frontend, scorer.batch_size, scorer.multi_label
    hop = hop_frames or max(1, frontend.target_frames // 2)
    pending: list[tuple[int, float, float, np.ndarray, int]] = []  # (clip, t0, t1, x, frames)
    logits: dict[int, list[tuple[float, float, np.ndarray]]] = {}
    done = 0  # clips whose windows are all scored are yielded in order

    def flush():
        x = np.stack([p[3] for p in pending])
        frames = np.asarray([p[4] for p in pending] + [0] * (batch_size - len(x)))
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        out = np.asarray(scorer.apply(x, frames), np.float32)[:len(pending)]
        for (clip, t0, t1, _, _), row in zip(pending, out):
            logits[clip].append((t0, t1, row))
        pending.clear()

    def finished(clip: int) -> ClipScores:
        rows = logits.pop(clip)
        z = np.stack([r[2] for r in rows])
        if multi_label:
            probs = 1.0 / (1.0 + np.exp(-z))
            scores = probs.max(axis=0)
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            mean = z.mean(axis=0)
            scores = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        return ClipScores(scores=scores, windows=[(t0, t1, p) for (t0, t1, _), p in
                                                  zip(rows, probs)])

    clip = -1
    prepared = ordered_map(lambda w: _clip_features(w, frontend=frontend, hop_frames=hop),
                           waves, workers=workers)
    for clip, (_, features, error) in enumerate(prepared):
        if error is not None:
            raise error
        logits[clip] = []
        for t0, t1, x, n in clip_windows(features, frontend=frontend):
            pending.append((clip, t0, t1, x, n))
            if len(pending) == batch_size:
                flush()
        # Clips before the first one still waiting in `pending` are complete.
        first_pending = pending[0][0] if pending else clip + 1
        while done < first_pending:
            yield finished(done)
            done += 1
    if pending:
        flush()
    while done <= clip:
        yield finished(done)
        done += 1
