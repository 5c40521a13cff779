"""Streaming inference: class scores of a live stream, one window every hop.

A stream (a microphone, raw PCM on stdin, a file played as a stream) arrives in chunks of
any size. `stream_scores` keeps the stream's latest window in a ring buffer (`Ring`) and,
each time `hop_frames` more frames of the stream are complete, scores the window that ends
at the last complete frame with one call of the checkpoint's compiled window forward
(`fast_ast_jax.windows.scorer(bundle, batch_size=1)`, what predict runs): every call has
the same static shape, so the whole stream costs one compilation.

The schedule, in frames of the front-end (frame f covers samples [f * hop_size,
f * hop_size + window_size); T = `frontend.target_frames`, the trained input length, and
H = `hop_frames`): after F = H, 2H, 3H, ... complete frames, the window is frames
[max(0, F - T), F), ending at the stream second ((F - 1) * hop_size + window_size) / rate.

    Before the stream holds T frames, the window is the stream so far, padded at the end
    as a short training clip is (`windows.window_row`: features of padding frames are
    normalised zeros, on the device the same from a zero-padded waveform; an ElasticAST
    sees it at its own length, without padding). So the first scores come after one hop,
    not one window, from less context than later ones.
    At the end of a finite stream, the frames after the last hop make one last window
    (ending at the last complete frame), as predict's last window reaches a clip's end.
    The outputs do not depend on how the stream is cut into chunks: each window holds the
    same samples whatever the chunks.

Each hop yields `Hop(start, end, scores)` (as predict's per-window `(start_s, end_s,
scores)`): stream seconds of the window's first sample and of its end, and class scores,
per window a softmax over the classes (a sigmoid per class for a multi-label checkpoint:
`windows.window_probs`), then the mean over the last `smooth` hops (a moving mean:
smooth=1 reports each window alone; N > 1 steadies the label at about (N - 1) / 2 hops more
delay).

Latency: a sound that starts at stream second c fills the whole window of every hop ending
at c + window or later, and a hop ends at most one hop after that: a change of label is
reported at most window + hop after it happens (earlier when the new sound dominates a
partly filled window), plus the time one hop takes to compute (benchmarks/stream.py).

Keeping up with a live stream (`keep_up`, the command's choice for a microphone and a
file played at the real rate): when hops take longer to compute than the audio they cover,
the audio that arrived meanwhile comes as one chunk (the readers pass on everything that
is waiting), and only the last hop that chunk completes is scored; the hops before it are
skipped and counted (`Hop.skipped`). The lines then stay within one hop's compute time of
the present instead of falling further behind with every hop. Without `keep_up` every hop
is scored, however late (a file or a pipe read as fast as it comes).

Sample rates: a stream at another rate than the checkpoint's is resampled on the fly
(`resampled`: soxr's streaming resampler at the quality of audio.io's file resampling);
times stay stream seconds.

Readers, each yielding mono float32 chunks and raising `AudioError` (one line naming the
source and what to do) on bad input: `pcm_chunks` (raw interleaved s16le / f32le bytes,
e.g. stdin from arecord or sox), `file_chunks` (any file audio.io decodes; `paced` plays
it at the real rate) and `mic_chunks` (a microphone, through the optional sounddevice
package: `pip install "fast_ast_jax[mic]"`).
"""
from __future__ import annotations

import collections
import queue
import time
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

import numpy as np
import soxr

from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.fbank_jax import samples_for_frames
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import RESAMPLE_QUALITY, AudioError, load_audio
from fast_ast_jax.windows import Scorer, window_probs, window_row

# Raw PCM sample formats of `pcm_chunks` (the names of sox / ffmpeg / arecord's S16_LE).
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MIC_PACKAGE = 'pip install "fast_ast_jax[mic]" (or: pip install sounddevice)'


class Hop(NamedTuple):
    """One scored window: `start`, `end` stream seconds, `scores` (C,) class scores;
    `skipped`: hops left unscored just before this one to keep up (`keep_up`)."""

    start: float
    end: float
    scores: np.ndarray
    skipped: int = 0


class Ring:
    """The last `capacity` samples of a stream in a fixed buffer: sample i of the stream
    sits at index i % capacity, so pushing costs the pushed samples and nothing grows."""

    def __init__(self, capacity: int):
        self._buffer = np.zeros(capacity, np.float32)
        self.total = 0  # samples pushed so far

    def push(self, samples: np.ndarray) -> None:
        """Append (n,) samples (only the last `capacity` of them can be read back)."""
        n, keep = len(samples), min(len(samples), len(self._buffer))
        np.put(self._buffer, range(self.total + n - keep, self.total + n), samples[n - keep:],
               mode="wrap")
        self.total += n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the stream (a copy); they must be among the last
        `capacity` pushed."""
        if not self.total - len(self._buffer) <= start <= stop <= self.total:
            raise IndexError(f"samples [{start}, {stop}) are not among the last "
                             f"{len(self._buffer)} of {self.total}")
        return np.take(self._buffer, range(start, stop), mode="wrap")


def hop_frames_for(seconds: float, *, frontend: FrontEnd) -> int:
    """Whole frames of the front-end nearest to `seconds` (at least 1)."""
    return max(1, round(seconds * frontend.sample_rate / frontend.hop_size))


def default_hop_frames(frontend: FrontEnd) -> int:
    """Half a window or 0.5 s, whichever is shorter."""
    return max(1, min(frontend.target_frames // 2, hop_frames_for(0.5, frontend=frontend)))


def window_seconds(frontend: FrontEnd) -> float:
    """Seconds of audio in one window (target_frames frames)."""
    return samples_for_frames(frontend.target_frames, frontend=frontend) / frontend.sample_rate


def stream_scores(chunks: Iterable[np.ndarray], *, scorer: Scorer, hop_frames: int,
                  sample_rate: int | None = None, smooth: int = 1,
                  keep_up: bool = False, name: str = "stream") -> Iterator[Hop]:
    """Class scores of a stream's windows, one `Hop` per `hop_frames` frames, lazily (the
    schedule, padding and smoothing: module docstring). The arguments are checked at the
    call, the stream is read as the hops are asked for.

    Args:
        chunks: (n,) mono float32 arrays of any length (0 too), in stream order.
        scorer: the checkpoint's window forward (`windows.scorer(bundle, batch_size=1)`);
            its front-end's target_frames is the window.
        hop_frames: frames between windows, 1 .. target_frames.
        sample_rate: the chunks' rate (default: the scorer's; another is resampled).
        smooth: hops whose window scores are averaged (1: none).
        keep_up: score only the last hop a chunk completes (module docstring: for live
            streams whose readers pass on all the audio waiting).
        name: the stream in error messages (e.g. "stdin").
    Raises:
        ValueError: hop_frames or smooth out of range.
        AudioError: the stream ended before one whole frame.
    """
    fe = scorer.frontend
    if not 1 <= hop_frames <= fe.target_frames:
        raise ValueError(
            f"a hop of {hop_frames} frames: use 1 to {fe.target_frames} frames, the window of "
            f"{window_seconds(fe):g} s (a longer hop leaves audio between windows unheard)")
    if smooth < 1:
        raise ValueError(f"smooth={smooth}: average over at least 1 hop (1 = no smoothing)")
    if sample_rate is not None and sample_rate != fe.sample_rate:
        chunks = resampled(chunks, sr=sample_rate, sample_rate=fe.sample_rate)
    return _hops(chunks, scorer=scorer, hop_frames=hop_frames, smooth=smooth,
                 keep_up=keep_up, name=name)


def _hops(chunks: Iterable[np.ndarray], *, scorer: Scorer, hop_frames: int, smooth: int,
          keep_up: bool, name: str) -> Iterator[Hop]:
    """`stream_scores`' generator, its arguments checked."""
    fe = scorer.frontend
    window, hop, size = fe.target_frames, fe.hop_size, fe.window_size
    # One window, and the part of a frame hop past the last complete frame.
    ring = Ring(samples_for_frames(window, frontend=fe) + hop)
    recent = collections.deque(maxlen=smooth)

    def end(frames: int) -> int:
        """Samples of the stream that its first `frames` frames cover."""
        return (frames - 1) * hop + size

    def score(frames: int, skipped: int = 0) -> Hop:
        """The window of the last (at most T) of the stream's first `frames` frames."""
        first, last = max(0, frames - window) * hop, end(frames)
        x, length = window_row(ring.read(first, last), frontend=fe, on_device=scorer.on_device)
        rows = np.zeros((scorer.batch_size,) + x.shape, np.float32)  # the window, then
        lengths = np.zeros(scorer.batch_size, np.int32)  # empty rows: the scorer's batch
        rows[0], lengths[0] = x, length
        logits = np.asarray(scorer.apply(rows, lengths), np.float32)[:1]
        recent.append(window_probs(logits, multi_label=scorer.multi_label)[0])
        return Hop(first / fe.sample_rate, last / fe.sample_rate, np.mean(recent, axis=0),
                   skipped)

    frames, scored = hop_frames, 0  # the next hop's complete frames; the last hop's
    for chunk in chunks:
        chunk = np.asarray(chunk, np.float32)
        skipped = 0
        if keep_up and ring.total + len(chunk) >= end(frames + hop_frames):
            # behind: go straight to the last hop this chunk completes (the ring keeps
            # only the last window of what is pushed past the skipped ones)
            skipped = (ring.total + len(chunk) - end(frames)) // (hop_frames * hop)
            frames += skipped * hop_frames
        while len(chunk):
            take = min(len(chunk), end(frames) - ring.total)
            ring.push(chunk[:take])
            chunk = chunk[take:]
            if ring.total == end(frames):
                yield score(frames, skipped)
                frames, scored, skipped = frames + hop_frames, frames, 0
    complete = num_frames(ring.total, window_size=size, hop_size=hop)
    if ring.total == 0:
        raise AudioError(f"{name}: empty stream, no audio arrived; check that the source "
                         "sends audio (and, for stdin, that it is piped in)")
    if complete == 0:
        raise AudioError(
            f"{name}: the stream ended after {ring.total} samples, before one "
            f"{fe.frame_length_ms:g} ms frame ({size} samples at {fe.sample_rate} Hz): "
            "nothing to score; send a longer stream")
    if complete > scored:
        yield score(complete)


def resampled(chunks: Iterable[np.ndarray], *, sr: int, sample_rate: int
              ) -> Iterator[np.ndarray]:
    """Mono float32 chunks at `sr` -> the same stream at `sample_rate`, resampled on the
    fly (soxr.ResampleStream at audio.io's quality; the last chunk flushes it)."""
    stream = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32",
                                 quality=RESAMPLE_QUALITY)
    for chunk in chunks:
        yield stream.resample_chunk(np.asarray(chunk, np.float32), last=False)
    yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _to_mono(frames: np.ndarray, *, name: str, offset: int, sr: int) -> np.ndarray:
    """(n, channels) float32 -> (n,) float32, channels averaged as audio.io does; NaN/Inf
    samples (from f32le) are an AudioError naming where they are."""
    if not np.all(np.isfinite(frames)):
        at = offset + int(np.argmax(~np.isfinite(frames).all(axis=1)))
        raise AudioError(f"{name}: NaN or Inf samples at stream second {at / sr:.3f} (sample "
                         f"frame {at}); check --format (f32le: little-endian float32)")
    if frames.shape[1] == 1:
        return frames[:, 0]
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)


def pcm_chunks(stream: BinaryIO, *, format: str, channels: int, sample_rate: int,
               block_samples: int, name: str = "stdin") -> Iterator[np.ndarray]:
    """Mono float32 chunks of raw interleaved PCM read from `stream` until its end.

    Each read takes what the stream holds, up to `block_samples` sample frames (`read1`:
    a live pipe is scored as it arrives); a frame split between reads waits for its rest.
    s16le becomes float32 in [-1, 1] (divided by 2**15, as audio.io reads 16-bit files),
    f32le stays as it is; channels are averaged.

    Args:
        stream: a binary file object (sys.stdin.buffer, a pipe, io.BytesIO).
        format: a `PCM_FORMATS` name.
        channels: interleaved channels per sample frame.
        sample_rate: the stream's rate (Hz), for the times in error messages.
        block_samples: sample frames per read at most.
        name: the stream in error messages.
    Raises:
        AudioError: the stream ends inside a sample frame (truncated, or the wrong format
            or channel count), or holds NaN / Inf samples.
    """
    dtype = PCM_FORMATS[format]
    frame = dtype.itemsize * channels
    read = getattr(stream, "read1", stream.read)
    rest, offset = b"", 0
    while data := read(block_samples * frame):
        data = rest + data
        whole = len(data) - len(data) % frame
        rest = data[whole:]
        if whole:
            frames = np.frombuffer(data[:whole], dtype).reshape(-1, channels).astype(
                np.float32)
            if dtype.kind == "i":
                frames /= 2 ** 15
            yield _to_mono(frames, name=name, offset=offset, sr=sample_rate)
            offset += len(frames)
    if rest:
        raise AudioError(
            f"{name}: the stream ended inside a sample frame ({len(rest)} stray bytes after "
            f"{offset} frames of {frame} bytes: {channels} channel(s) of {format}); the "
            "stream is truncated, or --format / --channels differ from what the source "
            "writes")


def file_chunks(path: str, *, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
    """A file as a stream: decoded, downmixed and resampled to `sample_rate` by audio.io
    (any format, rate and channels it reads), then cut into chunks of `block_samples`.

    Raises:
        AudioError: the file cannot be read (audio.io's message).
    """
    wave = load_audio(path, sample_rate=sample_rate)
    for i in range(0, len(wave), block_samples):
        yield wave[i:i + block_samples]


def paced(chunks: Iterable[np.ndarray], *, sample_rate: int,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[np.ndarray]:
    """`chunks` at the real rate: each is passed on when its last sample would have been
    recorded (stream seconds after the first chunk was asked for). Chunks that are already
    due when they are asked for (the consumer fell behind) are passed on together, as one
    chunk, as a microphone's waiting audio is (`mic_chunks`)."""
    start, samples, due = clock(), 0, []
    wait = lambda: start + samples / sample_rate - clock()
    for chunk in chunks:
        samples += len(chunk)
        if wait() > 0 and due:
            yield np.concatenate(due)
            due = []
        if wait() <= 0:  # (again: the consumer took its time with what was due)
            due.append(chunk)
            continue
        sleep(wait())
        yield chunk
    if due:
        yield np.concatenate(due)


def _sounddevice():
    """The sounddevice module, or an AudioError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise AudioError(f"the microphone needs the sounddevice package: {MIC_PACKAGE}; or "
                         "pipe raw PCM to stdin (arecord -q -f S16_LE -r 16000 -c 1 -t raw | "
                         "python -m fast_ast_jax.stream --checkpoint W -)") from None
    except OSError as e:  # the package is there, the PortAudio library it loads is not
        raise AudioError(f"sounddevice cannot load PortAudio ({e}): install the library "
                         "(Debian/Ubuntu: apt install libportaudio2; macOS: brew install "
                         "portaudio)") from None
    return sounddevice


def list_devices() -> str:
    """The audio devices PortAudio sees (sounddevice's table; input devices have '>' /
    '*' marks and input channels)."""
    devices = _sounddevice().query_devices()
    return str(devices) if len(devices) else "no audio devices: PortAudio sees none"


def mic_chunks(*, sample_rate: int, channels: int = 1, device: int | str | None = None,
               block_samples: int) -> Iterator[np.ndarray]:
    """Mono float32 chunks from a microphone until the consumer stops (Ctrl-C, or closing
    the generator closes the device).

    Args:
        sample_rate: the rate to open the device at (PortAudio converts where it can).
        channels: input channels to open (averaged).
        device: a device index or a substring of its name (default: the system's input).
        block_samples: sample frames per chunk.
    Raises:
        AudioError: sounddevice or PortAudio is missing, or the device cannot open.
    """
    sd = _sounddevice()
    arrived: queue.Queue = queue.Queue()
    which = "the default input" if device is None else f"input device {device!r}"
    try:
        mic = sd.InputStream(samplerate=sample_rate, channels=channels, dtype="float32",
                             device=device, blocksize=block_samples,
                             callback=lambda data, frames, when, status: arrived.put(
                                 data.copy()))
    except (sd.PortAudioError, ValueError) as e:
        raise AudioError(f"microphone: {which} cannot open at {sample_rate} Hz with "
                         f"{channels} channel(s) ({e}); see the devices with python -m "
                         "fast_ast_jax.stream --list_devices and pick one with --device, or "
                         "try another --sample_rate / --channels") from None
    offset = 0
    with mic:
        while True:
            blocks = [arrived.get()]
            while not arrived.empty():  # all that waits, as one chunk (`keep_up`)
                blocks.append(arrived.get_nowait())
            frames = np.concatenate(blocks)
            yield _to_mono(frames, name=which, offset=offset, sr=sample_rate)
            offset += len(frames)
