"""Sliding-window inference for clips longer than the trained input.

A model trained on `frontend.target_frames` frames (T) sees a long clip as windows of T
frames every `hop_frames` frames (default T // 2); the last window is padded like a short
training clip. Windows of all clips are streamed through the model in fixed-size batches,
so an hour-long file costs one waveform in memory plus one batch of features, never all of
its windows at once. A clip of at most T frames is exactly one window (the usual input).

Aggregation over a clip's windows (documented in docs/RELIABILITY.md):
    single-label (softmax): softmax of the mean of the window logits;
    multi-label (sigmoid): per class, the max over windows of the sigmoid (an event heard
        anywhere in the clip is in the clip).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.features import features
from fast_ast_jax.audio.frontend import FrontEnd


@dataclasses.dataclass
class ClipScores:
    """scores (C,) aggregated; windows: (start_s, end_s, scores (C,)) per window."""

    scores: np.ndarray
    windows: list[tuple[float, float, np.ndarray]]


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


def _windows(wave: np.ndarray, *, frontend: FrontEnd, hop_frames: int
             ) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, features (T, bins)) of each window of one mono waveform; the last
    window ends at the clip's end."""
    duration = len(wave) / frontend.sample_rate
    starts = window_starts(len(wave), frontend=frontend, hop_frames=hop_frames)
    for k, start in enumerate(starts):
        first = start * frontend.hop_size
        t0 = first / frontend.sample_rate
        # The last window reaches the end of the clip (a tail shorter than one frame hop
        # is not seen by any frame; a short clip is padded).
        t1 = duration if k + 1 == len(starts) else (
            first + frontend.window_size + (frontend.target_frames - 1) * frontend.hop_size
        ) / frontend.sample_rate
        # features() reads only the samples its target_frames need.
        yield t0, t1, features(wave[first:], frontend=frontend)


def windowed_scores(waves: Iterable[np.ndarray], *, apply: Callable[[np.ndarray], np.ndarray],
                    frontend: FrontEnd, multi_label: bool, hop_frames: int | None = None,
                    batch_size: int = 8) -> Iterator[ClipScores]:
    """Aggregated and per-window scores of each clip, in order.

    Args:
        waves: mono float32 waveforms at frontend.sample_rate (read lazily, one at a time).
        apply: features (batch_size, T, bins) -> logits (batch_size, C); always called with
            exactly `batch_size` rows (the last batch is zero-padded: one compilation).
        frontend: the checkpoint's front-end (T = target_frames).
        multi_label: sigmoid + max over windows, else softmax of mean logits.
        hop_frames: frames between window starts (default T // 2).
        batch_size: windows per model call.
    """
    hop = hop_frames or max(1, frontend.target_frames // 2)
    pending: list[tuple[int, float, float, np.ndarray]] = []  # (clip, t0, t1, features)
    logits: dict[int, list[tuple[float, float, np.ndarray]]] = {}
    done = 0  # clips whose windows are all scored are yielded in order

    def flush():
        x = np.stack([p[3] for p in pending])
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        out = np.asarray(apply(x), np.float32)[:len(pending)]
        for (clip, t0, t1, _), row in zip(pending, out):
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
    for clip, wave in enumerate(waves):
        logits[clip] = []
        for t0, t1, x in _windows(np.asarray(wave), frontend=frontend, hop_frames=hop):
            pending.append((clip, t0, t1, x))
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
