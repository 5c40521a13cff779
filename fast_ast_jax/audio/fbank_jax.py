"""The Kaldi fbank front-end in JAX: batched, jit-compatible, on the accelerator.

`device_features(waves, ...)` computes what `features.features` computes on the host (fbank
-> zero-pad / crop to target_frames -> normalise) for a batch of waveforms of one length,
so the loader only decodes and resamples and the accelerator makes the features
(config.frontend.on_device; predict's windows on an accelerator, fast_ast_jax.windows). It
agrees with the float64 NumPy reference to ~1e-5 on normalised features
(tests/test_fbank_jax.py) using float32 arithmetic only.

Why not a float32 rfft: mel bins just above the log floor (float32 eps = 1.2e-7, e.g. the
empty 4-8 kHz band of 8 kHz audio resampled to 16 kHz, or the lowest bins after
pre-emphasis) hold energies ~1e-10 of the frame's; a float32 FFT (or float32 DC removal
and pre-emphasis) errs by ~1e-7 of the frame's amplitude, i.e. up to 5e-4 in normalised
features there. So DC removal, pre-emphasis, window and the DFT are folded into one real
matrix M (window, 2 * (n_fft // 2 + 1)) built in float64 on the host, and the product
frames @ M is evaluated exactly enough: frames and M are each split into 4 slices of
integers in [-128, 128] (scaled by powers of two, so the split is exact); a product of two
slices sums 400 products of <= 2^14 each, < 2^24, so it is exact in a float32 matmul; the
10 slice products whose scale is within 2^-24 of the leading one are summed (Ozaki's
scheme). That is 10 matmuls of (frames, window) x (window, 2 * 257): ~4 GFLOP per 10 s
clip, < 1 % of an AST-base train step. The power spectrum, mel projection (a matmul at
Precision.HIGHEST; the default is TF32 on GPUs, bfloat16 on TPUs) and log are float32.

Short clips: a batch holds clips zero-padded to one length, so `lengths` gives each clip's
true sample count; frames not wholly inside a clip are set to log-mel 0 before
normalising, which is what `pad_or_crop` does to the frames a short clip lacks (zero
samples would give log(eps) instead).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fast_ast_jax.audio.fbank import LOG_FLOOR, fft_size, mel_banks, num_frames, window_function
from fast_ast_jax.audio.frontend import FrontEnd

SLICES = 4  # integer slices of 8 bits per operand (the first holds 7 bits and the sign)
_FIRST, _NEXT = 2.0 ** 7, 2.0 ** 8
_HIGHEST = jax.lax.Precision.HIGHEST


def samples_for_frames(frames: int, *, frontend: FrontEnd) -> int:
    """Samples whose snip-edges framing yields exactly `frames` frames (the fixed waveform
    length of a batch for target_frames)."""
    return frontend.window_size + (frames - 1) * frontend.hop_size


@functools.lru_cache(maxsize=16)
def spectrum_matrix(frontend: FrontEnd) -> np.ndarray:
    """float64 (window, 2 * bins) M with frame @ M = [Re X, Im X]: the rfft (n_fft points) of
    the frame after DC removal, pre-emphasis (first sample replicated) and the window."""
    win = frontend.window_size
    n_fft = fft_size(win)
    ops = np.eye(win)
    if frontend.remove_dc_offset:
        ops = ops - 1.0 / win
    if frontend.preemphasis:
        shift = np.eye(win, k=-1)  # row t takes sample t - 1 ...
        shift[0, 0] = 1.0  # ... and row 0 its own sample
        ops = ops - frontend.preemphasis * (shift @ ops)
    ops = window_function(frontend.window, win)[:, None] * ops  # (win, win): frame -> y
    phase = 2.0 * np.pi * np.outer(np.arange(win), np.arange(n_fft // 2 + 1)) / n_fft
    dft = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1)  # y @ dft = [Re, Im]
    return ops.T @ dft


def _split(x: jax.Array, axes) -> tuple[list[jax.Array], jax.Array]:
    """x = scale * sum_i q_i * 2^-(7 + 8 i) + O(2^-39 scale), q_i integers in [-128, 128]
    (float32), scale a power of two >= max |x| over `axes` (kept dims). Exact in float32."""
    peak = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    _, exponent = jnp.frexp(jnp.where(peak > 0, peak, 1.0))
    scale = jnp.ldexp(jnp.ones_like(peak), exponent)
    rest, slices = x / scale * _FIRST, []
    for _ in range(SLICES):
        q = jnp.round(rest)
        slices.append(q)
        rest = (rest - q) * _NEXT
    return slices, scale


@functools.lru_cache(maxsize=16)
def _matrix_slices(frontend: FrontEnd) -> tuple[np.ndarray, float]:
    """(SLICES, window, 2 * bins) float32 integer slices of `spectrum_matrix` and its
    power-of-two scale, split on the host in float64."""
    m = spectrum_matrix(frontend)
    scale = 2.0 ** np.frexp(np.abs(m).max())[1]
    rest, slices = m / scale * _FIRST, []
    for _ in range(SLICES):
        q = np.round(rest)
        slices.append(q)
        rest = (rest - q) * _NEXT
    return np.stack(slices).astype(np.float32), float(scale)


def _spectrum(frames: jax.Array, *, frontend: FrontEnd) -> jax.Array:
    """(B, n, window) float32 frames -> (B, n, 2 * bins) [Re X, Im X], see the module doc."""
    m_slices, m_scale = _matrix_slices(frontend)
    x_slices, x_scale = _split(frames, axes=(1, 2))
    total = None
    # Horner over the slice order d = i + j, from the smallest terms up.
    for d in reversed(range(SLICES)):
        term = sum(jnp.matmul(x_slices[i], m_slices[d - i], precision=_HIGHEST)
                   for i in range(d + 1))
        total = term if total is None else term + total / _NEXT
    return total * (x_scale * (m_scale / (_FIRST * _FIRST)))


def log_mel_macs(frames: int, *, frontend: FrontEnd) -> int:
    """Multiply-accumulates of `log_mel` for `frames` frames: the slice products of
    `_spectrum` (SLICES * (SLICES + 1) / 2 matmuls of frames x window x 2 * bins) and the mel
    projection (frames x bins x num_mel_bins)."""
    bins = fft_size(frontend.window_size) // 2 + 1
    products = SLICES * (SLICES + 1) // 2
    return frames * (products * frontend.window_size * 2 * bins + bins * frontend.num_mel_bins)


def log_mel(waves: jax.Array, *, frontend: FrontEnd, key: jax.Array | None = None
            ) -> jax.Array:
    """Kaldi log-mel fbank of a batch, as `fbank.fbank` row by row.

    Args:
        waves: (B, samples) float mono waveforms at frontend.sample_rate.
        frontend: front-end parameters (static).
        key: PRNG key for dither, required iff frontend.dither > 0 (the draws differ from
            the host's NumPy ones; their distribution is the same).
    Returns:
        (B, num_frames(samples), num_mel_bins) float32.
    """
    if waves.ndim != 2:
        raise ValueError(f"log_mel expects waveforms (B, samples), got shape {waves.shape}")
    if frontend.dither > 0 and key is None:
        raise ValueError(f"frontend.dither={frontend.dither} > 0 needs key=jax.random.key(...)")
    win, hop = frontend.window_size, frontend.hop_size
    n = num_frames(waves.shape[1], window_size=win, hop_size=hop)
    if n == 0:
        raise ValueError(f"waveforms of {waves.shape[1]} samples are shorter than one window "
                         f"({win} samples at {frontend.sample_rate} Hz)")
    index = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    frames = waves.astype(jnp.float32)[:, index]  # (B, n, win)
    if frontend.dither > 0:
        frames = frames + frontend.dither * jax.random.normal(key, frames.shape, jnp.float32)
    spectrum = _spectrum(frames, frontend=frontend)
    half = spectrum.shape[-1] // 2
    power = spectrum[..., :half] ** 2 + spectrum[..., half:] ** 2
    banks = mel_banks(num_bins=frontend.num_mel_bins, n_fft=fft_size(win),
                      sample_rate=float(frontend.sample_rate), low_freq=frontend.low_freq,
                      high_freq=frontend.high_freq)
    mel = jnp.matmul(power, jnp.asarray(banks, jnp.float32), precision=_HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def device_features(waves: jax.Array, *, frontend: FrontEnd, lengths: jax.Array | None = None,
                    key: jax.Array | None = None) -> jax.Array:
    """Normalised model input of a batch, as `features.features` clip by clip.

    Args:
        waves: (B, samples) float waveforms at frontend.sample_rate, clips zero-padded at
            the end to one length; samples past target_frames' worth are ignored.
        frontend: front-end parameters (static).
        lengths: (B,) int true sample count of each clip (None: all `samples`).
        key: PRNG key for dither (iff frontend.dither > 0).
    Returns:
        (B, frontend.target_frames, frontend.num_mel_bins) float32.
    """
    target = frontend.target_frames
    feats = log_mel(waves[:, :samples_for_frames(target, frontend=frontend)],
                    frontend=frontend, key=key)
    frames = feats.shape[1]
    if lengths is not None:
        # A clip of L samples has 1 + (L - window) // hop frames, 0 below one window.
        length = jnp.asarray(lengths, jnp.int32)
        valid = jnp.where(length >= frontend.window_size,
                          1 + (length - frontend.window_size) // frontend.hop_size, 0)
        feats = jnp.where(jnp.arange(frames)[None, :, None] < valid[:, None, None], feats, 0.0)
    if frames < target:
        feats = jnp.pad(feats, ((0, 0), (0, target - frames), (0, 0)))
    return (feats - np.float32(frontend.mean)) / np.float32(2.0 * frontend.std)


def pad_waves(waves: list[np.ndarray], *, samples: int) -> dict[str, np.ndarray]:
    """Host side: clips -> the batch `device_features` takes.

    waves: (L_i,) float waveforms; samples: the batch length (samples_for_frames(target)).
    Returns {"wave": (B, samples) float32, cut or zero-padded at the end, "wave_len": (B,)
    int32 min(L_i, samples)}.
    """
    out = np.zeros((len(waves), samples), np.float32)
    lengths = np.zeros(len(waves), np.int32)
    for row, wave in enumerate(waves):
        n = min(len(wave), samples)
        out[row, :n], lengths[row] = wave[:n], n
    return {"wave": out, "wave_len": lengths}
