"""Synthetic sound classes generated on the fly: the demo's data source (no files needed).

Eight clearly different sound types, each with randomised pitch, timbre, duration, level
and background noise, so a classifier has to learn the type, not one fixed waveform.
Example `i` of a split is a pure function of (seed, split, i): any example can be produced
in any order, which keeps the index-based pipeline deterministic and resumable.
"""
from __future__ import annotations

import zlib

import numpy as np

CLASSES = ("tone", "chirp_up", "chirp_down", "am_tone", "noise_burst", "click_train",
           "harmonic_stack", "vibrato")


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) attack/decay envelope with random attack and release times."""
    attack = max(1, int(n * rng.uniform(0.01, 0.15)))
    release = max(1, int(n * rng.uniform(0.05, 0.3)))
    env = np.ones(n)
    env[:attack] = np.linspace(0.0, 1.0, attack)
    env[n - release:] = np.minimum(env[n - release:], np.linspace(1.0, 0.0, release))
    return env


def _phase(freq: np.ndarray, sample_rate: int) -> np.ndarray:
    """Instantaneous frequency (n,) in Hz -> phase (n,) in radians."""
    return 2 * np.pi * np.cumsum(freq) / sample_rate


def _sound(kind: str, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 waveform of one sound type, peak around 1."""
    t = np.arange(n) / sample_rate
    nyq = sample_rate / 2
    f0 = rng.uniform(200.0, min(2000.0, nyq / 4))
    if kind == "tone":
        return np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
    if kind in ("chirp_up", "chirp_down"):
        lo, hi = f0 / 2, min(f0 * rng.uniform(3.0, 6.0), nyq * 0.8)
        sweep = lo * (hi / lo) ** (t / t[-1])  # exponential sweep
        return np.sin(_phase(sweep if kind == "chirp_up" else sweep[::-1], sample_rate))
    if kind == "am_tone":  # full-depth tremolo, slow enough to span several 10 ms frames
        rate = rng.uniform(3.0, 8.0)
        return (0.5 + 0.5 * np.sin(2 * np.pi * rate * t)) * np.sin(2 * np.pi * f0 * t)
    if kind == "noise_burst":
        # Band-passed noise: white noise filtered to a random band in the frequency domain.
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        lo = rng.uniform(100.0, nyq / 2)
        spec[(freqs < lo) | (freqs > min(lo * rng.uniform(1.5, 4.0), nyq))] = 0
        x = np.fft.irfft(spec, n)
        return x / (np.abs(x).max() + 1e-9)
    if kind == "click_train":
        x = np.zeros(n)
        period = int(sample_rate / rng.uniform(5.0, 40.0))
        width = max(1, int(sample_rate * rng.uniform(0.0005, 0.003)))
        for start in range(int(rng.integers(0, period)), n, period):
            x[start:start + width] = rng.choice([-1.0, 1.0]) * np.hanning(width + 2)[1:-1][
                : n - start]
        return x
    if kind == "harmonic_stack":
        f0 = f0 / 2
        harmonics = range(1, int(min(12, nyq * 0.8 // f0)) + 1)
        tilt = rng.uniform(0.3, 1.0)
        return sum(tilt ** (k - 1) * np.sin(2 * np.pi * k * f0 * t) for k in harmonics)
    if kind == "vibrato":
        # +-10-20 % (2-3 semitones): wider than a mel band, so visible in the fbank.
        rate, depth = rng.uniform(3.0, 7.0), rng.uniform(0.1, 0.2)
        return np.sin(_phase(f0 * (1 + depth * np.sin(2 * np.pi * rate * t)), sample_rate))
    raise ValueError(f"unknown synthetic sound {kind!r}; known: {CLASSES}")


class SyntheticSource:
    """Random-access source of generated clips.

    Example i -> {"id": "<split>-<i>", "audio": (n,) float32 at `sample_rate`, "label": int},
    with n between `min_seconds` and `max_seconds` (variable length). Labels cycle through
    the classes, so every split is class-balanced.
    """

    multi_label = False

    def __init__(self, *, num_examples: int, seed: int = 0, split: str = "train",
                 sample_rate: int = 16000, min_seconds: float = 0.4,
                 max_seconds: float = 1.2, noise: float = 0.05):
        if num_examples <= 0:
            raise ValueError(f"synthetic num_examples={num_examples} must be > 0")
        if not 0 < min_seconds <= max_seconds:
            raise ValueError(f"synthetic durations need 0 < min_seconds={min_seconds} <= "
                             f"max_seconds={max_seconds}")
        self.num_examples, self.seed, self.split = num_examples, seed, split
        self.sample_rate = sample_rate
        self.min_seconds, self.max_seconds, self.noise = min_seconds, max_seconds, noise
        self.labels = list(CLASSES)

    def __len__(self) -> int:
        return self.num_examples

    @property
    def ids(self) -> list[str]:
        """Clip ids in example order (as `self[i]["id"]`)."""
        return [f"{self.split}-{i}" for i in range(self.num_examples)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"synthetic index {index} out of range [0, {self.num_examples})")
        # Different splits draw from different streams (crc32 is stable across runs).
        rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])
        label = index % len(CLASSES)
        n = int(self.sample_rate * rng.uniform(self.min_seconds, self.max_seconds))
        x = _sound(CLASSES[label], n, self.sample_rate, rng) * _envelope(n, rng)
        x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.9)
        x = x + rng.uniform(0.0, self.noise) * rng.standard_normal(n)
        return {"id": f"{self.split}-{index}", "audio": x.astype(np.float32), "label": label}
