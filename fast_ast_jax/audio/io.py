"""Load audio files and arrays as float32 mono waveforms at a target sample rate.

Files are decoded with soundfile (libsndfile: wav, flac, ogg, mp3, aiff, ...) and, when it
cannot read them, with audioread (librosa's fallback decoder). Any channel count is
downmixed by the mean over channels; any rate is resampled with soxr "HQ" (what librosa's
default `soxr_hq` selects; called directly because librosa's first resample call pays
seconds of one-off set-up). Integer PCM becomes float32 in [-1, 1]; float files keep their
values. Every problem raises `AudioError` with a one-line message that names the source and
says what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

import audioread
import numpy as np
import soundfile as sf
import soxr

# soxr quality preset; "HQ" is what librosa's default res_type "soxr_hq" selects.
RESAMPLE_QUALITY = "HQ"

# File suffixes (lower case) taken for audio when a folder is walked.
AUDIO_EXTENSIONS = frozenset((".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a",
                              ".aac", ".aif", ".aiff", ".au", ".webm", ".wma"))


def audio_files(folder: str | os.PathLike) -> list[Path]:
    """Every audio file (`AUDIO_EXTENSIONS`) under `folder`, recursively, sorted by path
    string."""
    return sorted((f for f in Path(folder).rglob("*")
                   if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()), key=str)


class AudioError(ValueError):
    """Unusable audio input: missing, empty, undecodable or non-finite."""


def _resample(wave: np.ndarray, *, sr: int, sample_rate: int) -> np.ndarray:
    """(samples,) float32 at `sr` -> (round(samples * sample_rate / sr),) float32."""
    return soxr.resample(wave, sr, sample_rate, quality=RESAMPLE_QUALITY)


def _int_to_float(wave: np.ndarray, *, bit_depth: int | None, name: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1] by dividing by 2**(bit_depth - 1).

    Unsigned input is offset-binary PCM (WAV's 8-bit format): 2**(bit_depth - 1) is silence.
    """
    if bit_depth is None:
        if wave.dtype.itemsize > 4:
            raise AudioError(f"{name}: {wave.dtype} samples have no implied bit depth; pass "
                             f"bit_depth= (e.g. 16 for TFDS audio holding 16-bit PCM)")
        bit_depth = 8 * wave.dtype.itemsize
    if not 2 <= bit_depth <= 8 * wave.dtype.itemsize:
        raise AudioError(f"{name}: bit_depth={bit_depth} does not fit {wave.dtype} samples; "
                         f"pass the PCM bit depth the samples were recorded with")
    scale = float(2 ** (bit_depth - 1))
    if np.issubdtype(wave.dtype, np.unsignedinteger):
        wave = wave.astype(np.int64) - int(scale)
    if wave.size and (wave.min() < -scale or wave.max() > scale - 1):
        raise AudioError(f"{name}: integer samples span [{wave.min()}, {wave.max()}], outside "
                         f"{bit_depth}-bit PCM; pass the right bit_depth=")
    return (wave.astype(np.float64) / scale).astype(np.float32)


def prepare_waveform(wave: np.ndarray, *, sr: int, sample_rate: int,
                     bit_depth: int | None = None, name: str = "waveform") -> np.ndarray:
    """Validate, downmix and resample an in-memory waveform.

    Args:
        wave: (samples,) or (samples, channels) array, integer PCM or float.
        sr: the rate `wave` was sampled at (Hz).
        sample_rate: target rate (Hz).
        bit_depth: PCM bit depth of integer input; defaults to the dtype's width (int16 ->
            16) and must be given for int64 (TFDS stores 16-bit audio as int64).
        name: how errors refer to the source (a file path, a dataset key).

    Returns:
        (samples * sample_rate / sr,) float32 mono waveform.
    """
    wave = np.asarray(wave)
    if sr is None or sr <= 0 or sample_rate is None or sample_rate <= 0:
        raise AudioError(f"{name}: sample rates must be positive (sr={sr}, "
                         f"sample_rate={sample_rate}); pass the rate the audio was recorded at")
    if wave.ndim not in (1, 2):
        raise AudioError(f"{name}: waveform shape {wave.shape} is not (samples,) or "
                         f"(samples, channels); reshape it before loading")
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: audio has 0 samples; remove this clip or re-export it")
    if np.issubdtype(wave.dtype, np.integer):
        wave = _int_to_float(wave, bit_depth=bit_depth, name=name)
    elif np.issubdtype(wave.dtype, np.floating):
        wave = wave.astype(np.float32, copy=False)
    else:
        raise AudioError(f"{name}: samples of dtype {wave.dtype} are not audio; pass integer "
                         f"PCM or float samples")
    if wave.ndim == 2:
        if wave.shape[1] == 0:
            raise AudioError(f"{name}: waveform has 0 channels (shape {wave.shape}); pass "
                             f"(samples, channels) with at least one channel")
        if wave.shape[1] > wave.shape[0]:
            raise AudioError(f"{name}: shape {wave.shape} has more channels than samples; "
                             f"the layout is (samples, channels), transpose (channels, "
                             f"samples) arrays")
        wave = wave.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(wave)):
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        raise AudioError(f"{name}: {bad} of {wave.shape[0]} samples are NaN or Inf; "
                         f"re-export or drop this clip")
    if sr != sample_rate:
        wave = _resample(wave, sr=int(sr), sample_rate=int(sample_rate)).astype(np.float32)
    return np.ascontiguousarray(wave)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and its rate, via soundfile, else audioread."""
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return wave, int(sr)
    except Exception as sf_error:  # libsndfile raises for formats it cannot parse.
        reason = getattr(sf_error, "error_string", None) or str(sf_error)
    try:
        # The fallback librosa.load uses, called directly (librosa's import is slow):
        # system decoders (ffmpeg, GStreamer, Core Audio) yielding 16-bit PCM buffers.
        with audioread.audio_open(str(path)) as source:
            sr, channels = int(source.samplerate), int(source.channels)
            pcm = np.frombuffer(b"".join(source), dtype="<i2")
    except Exception as fallback_error:
        raise AudioError(
            f"{path}: cannot decode audio (libsndfile: {reason.strip()}; audioread: "
            f"{type(fallback_error).__name__}); check it is a valid audio file or re-encode "
            f"it as wav/flac") from fallback_error
    pcm = pcm[: pcm.size - pcm.size % channels].reshape(-1, channels)
    return pcm.astype(np.float32) / np.float32(2**15), sr


def load_audio(path: str | os.PathLike, *, sample_rate: int) -> np.ndarray:
    """Read an audio file as a float32 mono waveform at `sample_rate`.

    Args:
        path: wav/flac/ogg/mp3 (anything libsndfile or audioread decodes).
        sample_rate: target rate (Hz); the file is resampled when its rate differs.

    Returns:
        (samples,) float32; channels averaged; integer PCM scaled to [-1, 1].

    Raises:
        AudioError: missing, directory, zero-byte, undecodable, 0-sample or non-finite audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such audio file; check the path (relative paths are "
                         f"resolved from {Path.cwd()})")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file; pass a file path")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); re-download or re-export it")
    wave, sr = _decode(path)
    return prepare_waveform(wave, sr=sr, sample_rate=sample_rate, name=str(path))
