"""Sliding-window inference for clips longer than the trained input.

A model trained on `frontend.target_frames` frames (T) sees a long clip as windows of T
frames every `hop_frames` frames (default T // 2); the last window is padded like a short
training clip. Windows of all clips are streamed through the model in fixed-size batches,
so an hour-long file costs its waveform in memory plus one batch of windows, never all of
its windows at once. A clip of at most T frames is exactly one window (the usual input).

Where the features are made (`scorer(on_device=...)`):
    on the device: a window is cut from the waveform (the samples of its T frames,
        `samples_for_frames`), and one jitted program makes its fbank
        (fast_ast_jax.audio.fbank_jax), normalises it and runs the model; the host only
        decodes, resamples and slices. Frame k of the window starting at frame s is frame
        s + k of the clip (snip-edges framing from sample s * hop), so the window's features
        are those the host cuts from the clip's fbank (parity: tests/test_fbank_jax.py).
    on the host: the clip's fbank is computed once (NumPy, float64) and windows are cut
        from it. The default on the CPU backend, where the "device" is the same cores and
        the on-device DFT, exact enough for parity (fbank_jax's module docstring), costs
        more than the host's FFT (benchmarks/predict.py measures both).

An ElasticAST (packed, any-length model) is scored the same way with windows as long as
its packed row allows: a clip that fits is one window at its own length (packed alone into
one row, no padding frames, inside the jitted program), a longer one is cut into row-sized
windows (`scorer`).

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
import jax.numpy as jnp
import numpy as np

from fast_ast_jax import models
from fast_ast_jax.audio.fbank import fbank, num_frames
from fast_ast_jax.audio.fbank_jax import device_features, samples_for_frames
from fast_ast_jax.audio.features import normalize
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import ElasticAST
from fast_ast_jax.patches import grid_shape, patch_shape


@dataclasses.dataclass
class ClipScores:
    """scores (C,) aggregated; windows: (start_s, end_s, scores (C,)) per window."""

    scores: np.ndarray
    windows: list[tuple[float, float, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A model's forward over fixed-size batches of windows.

    Attributes:
        apply: (windows, lengths (batch_size,) int) -> logits (batch_size, C); always
            called with exactly batch_size rows. on_device: windows (batch_size,
            samples_for_frames(T)) float32 waveforms zero-padded at the end, lengths their
            real samples; else windows (batch_size, T, bins) normalised features padded
            as in training, lengths their real frames.
        frontend: the front-end of one window (T = target_frames: the window length).
        multi_label: sigmoid + max over windows, else softmax of mean logits.
        batch_size: windows per call.
        on_device: where the features are made (module docstring).
        aggregate: (outputs (windows, ...) of one clip) -> (clip output, per-window
            outputs), in place of the class-score aggregation `multi_label` chooses.
    """

    apply: Callable[[np.ndarray, np.ndarray], np.ndarray]
    frontend: FrontEnd
    multi_label: bool
    batch_size: int = 8
    on_device: bool = False
    aggregate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


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
        target_frames=(t_dim - 1) * model.tstride + patch_shape(model.patch_size)[1])


def packed_rows(x: jax.Array, frames: jax.Array, *, model: ElasticAST, tokens: int
                ) -> dict[str, jax.Array]:
    """Each window alone in one packed row of `tokens` tokens, at its own length: what
    `packing.pack(..., max_slots=1)` makes of the windows' patches (`packing.patchify` of
    their first max(frames, patch frames) frames), as a jittable function.

    x: (B, T, bins) features; frames: (B,) int real frames per window. Returns the packed
    model input: patches (B, tokens, ph*pw) ((ph, pw) = the model's patch_shape),
    segment_ids (B, tokens), positions (B, tokens, 2), slot_index (B, 1).
    """
    (ph, pw), fs, ts = patch_shape(model.patch_size), model.fstride, model.tstride
    batch, window, bins = x.shape
    f_dim, t_all = grid_shape(frames=window, num_mel_bins=bins, patch_size=(ph, pw),
                              fstride=fs, tstride=ts)
    # Every patch of the full window, frequency-major, each vector ordered (p_freq, p_time).
    freq = (np.arange(f_dim) * fs)[:, None, None, None] + np.arange(ph)[None, None, :, None]
    time = (np.arange(t_all) * ts)[None, :, None, None] + np.arange(pw)[None, None, None, :]
    grid = x[:, time, freq].reshape(batch, f_dim * t_all, ph * pw)
    # Token j of a window with `cols` patch columns is patch (j // cols, j % cols).
    cols = (jnp.maximum(jnp.asarray(frames, jnp.int32), pw) - pw) // ts + 1
    j = jnp.arange(tokens)[None, :]
    valid = j < f_dim * cols[:, None]
    f, t = j // cols[:, None], j % cols[:, None]
    source = jnp.where(valid, f * t_all + t, 0)
    patches = jnp.take_along_axis(grid, source[..., None], axis=1)
    return {"patches": jnp.where(valid[..., None], patches, 0.0),
            "segment_ids": valid.astype(jnp.int32),
            "positions": jnp.where(valid[..., None], jnp.stack([f, t], axis=-1), 0),
            "slot_index": jnp.arange(batch, dtype=jnp.int32)[:, None]}


def scorer(bundle: Bundle, *, batch_size: int = 8, on_device: bool | None = None,
           **overrides: Any) -> Scorer:
    """The jitted fixed-batch forward of a loaded checkpoint, with model field `overrides`
    (e.g. tome_r=8). AST / CNN: windows of the trained length. ElasticAST: each window is
    packed alone into one row at its own length (tokens of padding frames never enter).

    on_device: make the features in the jitted program from waveform windows (default:
        on an accelerator backend, not on the CPU; module docstring).
    """
    model = bundle.model.clone(**overrides) if overrides else bundle.model
    if models.is_packed(model):
        tokens, fe = elastic_row(model, bundle)
        run = lambda p, x, frames: model.apply(
            {"params": p}, packed_rows(x, frames, model=model, tokens=tokens),
            train=False)[0][:, 0]
    else:
        fe = bundle.frontend
        run = lambda p, x, frames: model.apply({"params": p}, x, train=False)
    return window_scorer(run, params=bundle.params, frontend=fe, batch_size=batch_size,
                         on_device=on_device, multi_label=bundle.multi_label)


def window_scorer(run: Callable, *, params, frontend: FrontEnd, batch_size: int,
                  on_device: bool | None, multi_label: bool = False,
                  aggregate: Callable | None = None) -> Scorer:
    """A Scorer of run(params, x (B, T, bins) features, frames (B,) real frames) -> (B, ...)
    outputs per window, its features made on the host or in the jitted program
    (`on_device`; default: on an accelerator backend). `scorer` (class scores) and
    fast_ast_jax.embeddings build theirs through it."""
    fe = frontend
    on_device = jax.default_backend() != "cpu" if on_device is None else on_device
    # Dither (if any) from a fixed key, as evaluation does: predictions are deterministic.
    key = jax.random.PRNGKey(0) if fe.dither > 0 else None

    def forward(p, windows, lengths):
        if not on_device:
            return run(p, windows, lengths)
        x = device_features(windows, frontend=fe, lengths=lengths, key=key)
        frames = jnp.where(lengths >= fe.window_size,
                           1 + (lengths - fe.window_size) // fe.hop_size, 0)
        return run(p, x, frames)

    jitted = jax.jit(forward)
    return Scorer(apply=lambda windows, lengths: jitted(params, windows, lengths),
                  frontend=fe, multi_label=multi_label, batch_size=batch_size,
                  on_device=on_device, aggregate=aggregate)


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
class _Clip:
    """A clip's waveform (on_device) or normalised fbank (frames, bins) computed once
    (host), and its window starts."""

    data: np.ndarray
    starts: list[int]
    duration: float


def _prepare(wave: np.ndarray, *, frontend: FrontEnd, hop_frames: int, on_device: bool
             ) -> _Clip:
    starts = window_starts(len(wave), frontend=frontend, hop_frames=hop_frames)
    # Samples past the last window's last frame cannot change any window.
    data = np.asarray(wave[:samples_for_frames(starts[-1] + frontend.target_frames,
                                               frontend=frontend)], np.float32)
    if not on_device:
        data = normalize(fbank(data, frontend=frontend), frontend=frontend)
    return _Clip(data=data, starts=starts, duration=len(wave) / frontend.sample_rate)


def clip_windows(clip: _Clip, *, frontend: FrontEnd, on_device: bool
                 ) -> Iterator[tuple[float, float, np.ndarray, int]]:
    """(start_s, end_s, window, length) of each window of a clip (`Scorer.apply`'s rows:
    waveform and samples, or features and frames); the last window ends at the clip's end.
    Frames are independent, so a window cut from the clip's fbank equals
    `features(wave[first:])` of its own samples (padding cells are normalised zeros, as
    there), and equals what `device_features` makes of those samples."""
    window, hop = frontend.target_frames, frontend.hop_size
    samples = samples_for_frames(window, frontend=frontend)
    size, fill = (samples, 0.0) if on_device else (window, normalize(
        np.zeros((1, clip.data.shape[1]), np.float32), frontend=frontend))
    for k, start in enumerate(clip.starts):
        first = start * hop
        # The last window reaches the end of the clip (a tail shorter than one frame hop
        # is not seen by any frame; a short clip is padded).
        t1 = clip.duration if k + 1 == len(clip.starts) else (
            (first + samples) / frontend.sample_rate)
        x = clip.data[first:first + samples] if on_device else clip.data[start:start + window]
        n = len(x)
        if n < size:
            x = np.concatenate([x, np.broadcast_to(np.asarray(fill, np.float32),
                                                   (size - n,) + x.shape[1:])])
        yield first / frontend.sample_rate, t1, x, n


def window_row(wave: np.ndarray, *, frontend: FrontEnd, on_device: bool
               ) -> tuple[np.ndarray, int]:
    """`Scorer.apply`'s row for one window from its own samples: (window, length) as
    `clip_windows` yields for a clip of just those samples (at most
    samples_for_frames(T)), padded as in training when shorter (fast_ast_jax.streaming
    scores each window of a stream through it)."""
    clip = _prepare(wave, frontend=frontend, hop_frames=frontend.target_frames,
                    on_device=on_device)
    (_, _, x, n), = clip_windows(clip, frontend=frontend, on_device=on_device)
    return x, n


def window_probs(logits: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """(windows, C) logits -> (windows, C) class scores of each window: sigmoids
    (multi-label) or a softmax over the classes (single-label)."""
    z = np.asarray(logits, np.float32)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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
        workers: threads preparing the next clips (on the host: their features) while the
            model runs (0: in this thread).
    """
    frontend, batch_size, multi_label = scorer.frontend, scorer.batch_size, scorer.multi_label
    hop = hop_frames or max(1, frontend.target_frames // 2)
    pending: list[tuple[int, float, float, np.ndarray, int]] = []  # (clip, t0, t1, x, length)
    logits: dict[int, list[tuple[float, float, np.ndarray]]] = {}
    done = 0  # clips whose windows are all scored are yielded in order

    def flush():
        x = np.stack([p[3] for p in pending])
        lengths = np.asarray([p[4] for p in pending] + [0] * (batch_size - len(x)), np.int32)
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        out = np.asarray(scorer.apply(x, lengths), np.float32)[:len(pending)]
        for (clip, t0, t1, _, _), row in zip(pending, out):
            logits[clip].append((t0, t1, row))
        pending.clear()

    def finished(clip: int) -> ClipScores:
        rows = logits.pop(clip)
        z = np.stack([r[2] for r in rows])
        if scorer.aggregate is not None:
            scores, probs = scorer.aggregate(z)
        else:
            probs = window_probs(z, multi_label=multi_label)
            scores = probs.max(axis=0) if multi_label else window_probs(
                z.mean(axis=0, keepdims=True), multi_label=False)[0]
        return ClipScores(scores=scores, windows=[(t0, t1, p) for (t0, t1, _), p in
                                                  zip(rows, probs)])

    clip = -1
    prepared = ordered_map(lambda w: _prepare(w, frontend=frontend, hop_frames=hop,
                                              on_device=scorer.on_device),
                           waves, workers=workers)
    for clip, (_, prepared_clip, error) in enumerate(prepared):
        if error is not None:
            raise error
        logits[clip] = []
        for t0, t1, x, n in clip_windows(prepared_clip, frontend=frontend,
                                         on_device=scorer.on_device):
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
