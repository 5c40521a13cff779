"""Kaldi-compatible log-mel filterbank in numpy (host side).

Reproduces `torchaudio.compliance.kaldi.fbank` with AST's settings (docs/REFERENCES.md §2):
snip_edges framing, optional Gaussian dither, per-frame DC removal, pre-emphasis with the
first sample replicated, symmetric window, zero-padding to a power-of-two FFT, power
spectrum, Kaldi mel triangles built in mel space (mel = 1127 ln(1 + f / 700)) with a zero
Nyquist column, and a natural log floored at float32 eps. Energy is never appended.

Everything is computed in float64 (torchaudio works in float32, HF's numpy path in
float64/complex64) and returned as float32, so both references agree to ~1e-5.
"""
from __future__ import annotations

import functools

import numpy as np

from fast_ast_jax.audio.frontend import FrontEnd

# Kaldi / torchaudio floor before the log: torch.finfo(torch.float32).eps.
LOG_FLOOR = float(np.finfo(np.float32).eps)


def num_frames(num_samples: int, *, window_size: int, hop_size: int) -> int:
    """Frames Kaldi's snip_edges framing yields: 1 + (N - window) // hop, or 0 if N < window."""
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // hop_size


def fft_size(window_size: int) -> int:
    """Kaldi's round_to_power_of_two: the smallest power of two >= window_size."""
    return 1 << max(0, int(window_size - 1).bit_length())


@functools.lru_cache(maxsize=16)
def window_function(kind: str, size: int) -> np.ndarray:
    """Kaldi analysis window of `size` samples, float64 (size,), read-only.

    "hanning" is the symmetric Hann window (torch.hann_window(periodic=False)), "hamming"
    the symmetric 0.54/0.46 Hamming window, "povey" the symmetric Hann raised to 0.85.
    """
    if size == 1:
        win = np.ones(1)
    else:
        phase = 2.0 * np.pi * np.arange(size) / (size - 1)
        if kind == "hanning":
            win = 0.5 - 0.5 * np.cos(phase)
        elif kind == "hamming":
            win = 0.54 - 0.46 * np.cos(phase)
        elif kind == "povey":
            win = (0.5 - 0.5 * np.cos(phase)) ** 0.85
        else:
            raise ValueError(f"window={kind!r} is unknown; use 'hanning', 'hamming' or 'povey'")
    win.setflags(write=False)
    return win


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(*, num_bins: int, n_fft: int, sample_rate: float, low_freq: float,
              high_freq: float) -> np.ndarray:
    """Kaldi mel filterbank, float64 (n_fft // 2 + 1, num_bins), read-only.

    Triangles are linear in mel between equally spaced mel edges from `low_freq` to
    `high_freq` (<= 0 means Nyquist + high_freq); the Nyquist row is zero as in torchaudio.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"mel range low_freq={low_freq} .. high_freq={high_freq} is invalid "
                         f"at sample_rate={sample_rate}; need 0 <= low < high <= {nyquist}")
    mel_low, mel_high = _mel(low_freq), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)
    center, right = left + delta, left + 2.0 * delta
    # Kaldi evaluates the triangles at the n_fft // 2 bins below Nyquist only.
    fft_mel = _mel(np.arange(n_fft // 2) * (sample_rate / n_fft))[:, None]
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    banks = np.concatenate([banks, np.zeros((1, num_bins))], axis=0)
    banks.setflags(write=False)
    return banks


def frame_signal(waveform: np.ndarray, *, window_size: int, hop_size: int) -> np.ndarray:
    """Snip-edges frames as a read-only strided view (n_frames, window_size) of `waveform`."""
    n = num_frames(waveform.shape[0], window_size=window_size, hop_size=hop_size)
    if n == 0:
        return np.zeros((0, window_size), dtype=waveform.dtype)
    step = waveform.strides[0]
    return np.lib.stride_tricks.as_strided(
        waveform, shape=(n, window_size), strides=(hop_size * step, step), writeable=False)


def _log_mel_block(frames: np.ndarray, *, frontend: FrontEnd, n_fft: int,
                   rng: np.random.Generator | None) -> np.ndarray:
    """(n, window) float64 frames -> (n, num_mel_bins) float32 log-mel."""
    if frontend.dither > 0:
        frames = frames + frontend.dither * rng.standard_normal(frames.shape)
    if frontend.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if frontend.preemphasis:
        # Kaldi replicates each frame's first sample: y[0] = x[0] - c * x[0].
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - frontend.preemphasis * previous
    frames = frames * window_function(frontend.window, frames.shape[1])
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    banks = mel_banks(num_bins=frontend.num_mel_bins, n_fft=n_fft,
                      sample_rate=float(frontend.sample_rate), low_freq=frontend.low_freq,
                      high_freq=frontend.high_freq)
    return np.log(np.maximum(power @ banks, LOG_FLOOR)).astype(np.float32)


def fbank(waveform: np.ndarray, *, frontend: FrontEnd,
          rng: np.random.Generator | None = None, block_frames: int = 4096) -> np.ndarray:
    """Kaldi log-mel filterbank of one mono waveform.

    Args:
        waveform: (samples,) float, mono, already at `frontend.sample_rate`, in [-1, 1].
        frontend: the front-end parameters.
        rng: numpy Generator for dither; required iff `frontend.dither > 0`.
        block_frames: frames processed at once; bounds float64 temporaries (~40 MB at the
            default) for hour-long audio. The result does not depend on it.

    Returns:
        (n_frames, frontend.num_mel_bins) float32, n_frames = 1 + (N - window) // hop, or
        (0, num_mel_bins) when the waveform is shorter than one window.
    """
    wave = np.asarray(waveform)
    if wave.ndim != 1:
        raise ValueError(f"fbank expects a mono waveform of shape (samples,), got shape "
                         f"{wave.shape}; downmix first (see prepare_waveform)")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"fbank expects float samples in [-1, 1], got {wave.dtype}; convert "
                         f"integer PCM with prepare_waveform (or features(..., sr=rate))")
    if frontend.dither > 0 and rng is None:
        raise ValueError(f"frontend.dither={frontend.dither} > 0 needs an explicit "
                         f"rng=np.random.default_rng(seed) so features are reproducible")
    frames = frame_signal(np.ascontiguousarray(wave, dtype=np.float64),
                          window_size=frontend.window_size, hop_size=frontend.hop_size)
    n_fft = fft_size(frontend.window_size)
    out = np.empty((frames.shape[0], frontend.num_mel_bins), dtype=np.float32)
    # Dither draws row by row, so blockwise draws equal one draw for all frames.
    for start in range(0, frames.shape[0], block_frames):
        block = frames[start:start + block_frames]
        out[start:start + block.shape[0]] = _log_mel_block(block, frontend=frontend,
                                                           n_fft=n_fft, rng=rng)
    return out
