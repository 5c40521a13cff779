"""Training augmentation on host-side features (NumPy): SpecAugment, mixup, noise + roll,
and `Augment`, the settings (config.augment) that both the host and the device
(audio.augment_jax) apply.

They follow AST's dataloader (arXiv:2104.01778) but act on *normalised* features, after
the front-end: AST masks with 0 before normalising, so a masked cell becomes
`(0 - mean) / (2 * std)` (features.pad_value), which is the `fill` value used here.
Mixup mixes features, not waveforms: features are cached once per clip, which makes
epochs cheap; since the normalisation is affine, mixing normalised features equals
normalising mixed log-mels (though a log-mel mix differs from the log-mel of a waveform
mix, which AST uses).
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation settings (all off by default): SpecAugment mask widths, mixup
    probability and Beta(alpha, alpha) weight, noise + roll."""

    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0  # probability of mixing an example with a random other one
    mixup_alpha: float = 10.0
    noise: bool = False

    def __post_init__(self):
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup={self.mixup} is a probability; use a value in [0, 1]")
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"mask widths freqm={self.freqm}, timem={self.timem} must be >= 0")


def spec_augment(x: np.ndarray, *, freqm: int, timem: int, fill: float,
                 rng: np.random.Generator) -> np.ndarray:
    """One frequency mask then one time mask, as torchaudio's masking in AST.

    Args:
        x: (frames, bins) features.
        freqm, timem: maximum mask widths (width ~ U[0, param)); 0 disables.
        fill: value of masked cells (the normalised value of a zero log-mel).
    Returns:
        (frames, bins) masked copy.
    """
    x = x.copy()
    frames, bins = x.shape
    for param, size, axis in ((freqm, bins, 1), (timem, frames, 0)):
        if param <= 0:
            continue
        width = int(rng.integers(0, min(param, size + 1)))
        start = int(rng.integers(0, size - width + 1))
        if axis == 1:
            x[:, start:start + width] = fill
        else:
            x[start:start + width] = fill
    return x


def noise_and_roll(x: np.ndarray, *, rng: np.random.Generator, max_shift: int = 10
                   ) -> np.ndarray:
    """AST's SpeechCommands augmentation: add U·U/10 noise, roll time by [-10, 9] frames.

    x: (frames, bins) -> (frames, bins).
    """
    x = x + rng.random(x.shape) * rng.random() / 10
    return np.roll(x, int(rng.integers(-max_shift, max_shift)), axis=0).astype(np.float32)


def mixup(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, *,
          rng: np.random.Generator, alpha: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Mix two examples with lam ~ Beta(alpha, alpha) (AST: Beta(10, 10)).

    Args:
        x1, x2: (frames, bins) features; y1, y2: (C,) one-hot / multi-hot targets.
    Returns:
        (lam*x1 + (1-lam)*x2, lam*y1 + (1-lam)*y2).
    """
    lam = float(rng.beta(alpha, alpha))
    return ((lam * x1 + (1 - lam) * x2).astype(np.float32),
            (lam * y1 + (1 - lam) * y2).astype(np.float32))


def check_no_mixup(mixup: float, *, field: str = "augment.mixup") -> None:
    """Packed rows have no mixup (mixing needs two clips of one shape; packed clips differ
    in length and hop): raise ValueError("<field>=<value>: must be 0 ...") unless `mixup`
    is 0. The one check, made by data.packed.PackedPipeline and, naming the config's
    field before any data is read, by the packed model's config check."""
    if mixup > 0:
        raise ValueError(f"{field}={mixup!r}: must be 0 with packing (clips of different "
                         "lengths and hops cannot be mixed)")
