"""Model input from audio: fbank -> pad/crop to target frames -> normalise.

Order as in AST's dataloader (arXiv:2104.01778): pad with zeros (or cut) at the end, then
`(x - mean) / (2 * std)`, so padded cells become -mean / (2 * std) (`pad_value`).
"""
from __future__ import annotations

import os

import numpy as np

from fast_ast_jax.audio.fbank import fbank
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import load_audio, prepare_waveform


def pad_or_crop(feats: np.ndarray, *, target_frames: int) -> np.ndarray:
    """(frames, bins) -> (target_frames, bins): zero-pad or cut at the end."""
    frames = feats.shape[0]
    if frames >= target_frames:
        return feats[:target_frames]
    pad = np.zeros((target_frames - frames,) + feats.shape[1:], dtype=feats.dtype)
    return np.concatenate([feats, pad], axis=0)


def normalize(feats: np.ndarray, *, frontend: FrontEnd) -> np.ndarray:
    """`(x - mean) / (2 * std)` with the front-end's dataset statistics; float32."""
    return ((feats - np.float32(frontend.mean))
            / np.float32(2.0 * frontend.std)).astype(np.float32)


def pad_value(frontend: FrontEnd) -> float:
    """The normalised value of a zero log-mel cell, -mean / (2 * std): what padded frames
    read, and masked ones (SpecAugment masks with it, as AST masks before normalising)."""
    return (0.0 - frontend.mean) / (2 * frontend.std)


def features(waveform: np.ndarray, *, frontend: FrontEnd, sr: int | None = None,
             bit_depth: int | None = None,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Normalised model input of one clip.

    Args:
        waveform: (samples,) mono float at `frontend.sample_rate`; or, with `sr` given,
            (samples,) / (samples, channels) float or integer PCM at rate `sr`, which is
            downmixed and resampled first (see `prepare_waveform`).
        frontend: front-end parameters.
        sr: the waveform's rate when it may differ from `frontend.sample_rate`.
        bit_depth: PCM bit depth of integer input (only with `sr`).
        rng: numpy Generator, required iff `frontend.dither > 0`.

    Returns:
        (frontend.target_frames, frontend.num_mel_bins) float32.
    """
    if sr is not None:
        waveform = prepare_waveform(waveform, sr=sr, sample_rate=frontend.sample_rate,
                                    bit_depth=bit_depth)
    # Samples past the last kept frame cannot change the output (frames are independent and
    # dither draws row by row), so skip them: long clips cost no more than target_frames.
    needed = frontend.window_size + (frontend.target_frames - 1) * frontend.hop_size
    feats = fbank(np.asarray(waveform)[:needed], frontend=frontend, rng=rng)
    return normalize(pad_or_crop(feats, target_frames=frontend.target_frames),
                     frontend=frontend)


def features_from_file(path: str | os.PathLike, *, frontend: FrontEnd,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """`features` of an audio file: (frontend.target_frames, frontend.num_mel_bins) float32."""
    wave = load_audio(path, sample_rate=frontend.sample_rate)
    return features(wave, frontend=frontend, rng=rng)
