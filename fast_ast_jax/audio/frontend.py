"""The front-end contract: every parameter that turns a waveform into model input.

One frozen `FrontEnd` is saved inside every checkpoint (with the label names), so inference
on a checkpoint reproduces the training input exactly. Defaults are AST's AudioSet settings
(docs/REFERENCES.md §2).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

# AudioSet statistics used by AST and the HF feature extractor.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclasses.dataclass(frozen=True)
class FrontEnd:
    """Kaldi-compatible log-mel fbank + pad/crop + normalisation.

    Attributes:
        sample_rate: audio is resampled to this rate (Hz) on load.
        num_mel_bins: mel filters.
        frame_length_ms, frame_shift_ms: analysis window and hop.
        window: "hanning" (symmetric Hann, Kaldi's), "hamming" or "povey".
        preemphasis: pre-emphasis coefficient (0 disables).
        remove_dc_offset: subtract each frame's mean before pre-emphasis.
        low_freq, high_freq: mel range in Hz; high_freq <= 0 means Nyquist + high_freq.
        dither: Kaldi dither amount (0 = off, deterministic).
        target_frames: frames after zero-padding / cropping at the end.
        mean, std: normalisation `(x - mean) / (2 * std)`.
        on_device: where training computed the features: False on the host (NumPy,
            fast_ast_jax.audio.features), True on the accelerator (fast_ast_jax.audio.fbank_jax;
            the loader ships waveforms). Both give the same features (to ~2e-5), so a
            checkpoint predicts from either; recorded so a run resumes as it started.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    dither: float = 0.0
    target_frames: int = 1024
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    on_device: bool = False

    def __post_init__(self):
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate={self.sample_rate} must be > 0")
        if self.num_mel_bins <= 0:
            problems.append(f"num_mel_bins={self.num_mel_bins} must be > 0")
        if not 0 < self.frame_shift_ms <= self.frame_length_ms:
            problems.append(f"frame_shift_ms={self.frame_shift_ms} must be in "
                            f"(0, frame_length_ms={self.frame_length_ms}]")
        elif self.window_size < 2 or self.hop_size < 1:
            problems.append(f"frame_length_ms={self.frame_length_ms}, frame_shift_ms="
                            f"{self.frame_shift_ms} give window_size={self.window_size} (need "
                            f">= 2), hop_size={self.hop_size} (need >= 1) at "
                            f"sample_rate={self.sample_rate}")
        if self.window not in ("hanning", "hamming", "povey"):
            problems.append(f"window={self.window!r} must be 'hanning', 'hamming' or 'povey'")
        if self.target_frames <= 0:
            problems.append(f"target_frames={self.target_frames} must be > 0")
        if not self.std > 0:
            problems.append(f"std={self.std} must be > 0")
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not 0 <= self.low_freq < high <= nyquist:
            problems.append(f"mel range low_freq={self.low_freq} .. high_freq={self.high_freq} "
                            f"is invalid at sample_rate={self.sample_rate}")
        if problems:
            raise ValueError("invalid FrontEnd: " + "; ".join(problems))

    # Kaldi (and torchaudio.compliance.kaldi) truncate: int(rate * ms * 0.001), evaluated in
    # this order; rounding would differ at e.g. 11025 Hz (275.625 -> 275, not 276).
    @property
    def window_size(self) -> int:
        """Samples per analysis window."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def hop_size(self) -> int:
        """Samples per hop."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    def replace(self, **changes) -> "FrontEnd":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontEnd":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FrontEnd field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def features_json(self) -> str:
        """JSON of the fields that determine the features (all but on_device): the key of
        feature caches, unchanged by fields that do not change the features."""
        return json.dumps({k: v for k, v in self.to_dict().items() if k != "on_device"},
                          sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "FrontEnd":
        return cls.from_dict(json.loads(s))
