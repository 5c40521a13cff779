"""What the padded (data.pipeline) and the packed (data.packed) pipelines share: the
bad-clip policy and record, this host's share of a batch, the feature cache file, and
the training set's fbank statistics (config.data.auto_stats).

Both pipelines are strategies over these: each decides which clips form a batch and how
they are laid out (padded to one length, or packed into rows), and keeps its own cache
layout; the rules below are the same for both.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fast_ast_jax.audio.fbank import fbank
from fast_ast_jax.audio.io import AudioError

BAD_CLIP_POLICIES = ("skip", "fail")


class BadClips(dict):
    """index -> message of the source clips whose audio raised `AudioError`, under one
    `on_bad_clip` policy: "fail" raises at once naming the clip, "skip" records it."""

    def __init__(self, policy: str):
        if policy not in BAD_CLIP_POLICIES:
            raise ValueError(f"config.data.on_bad_clip={policy!r}: use one of "
                             f"{BAD_CLIP_POLICIES}")
        super().__init__()
        self.policy = policy

    def record(self, index: int, error: AudioError) -> None:
        """Raise (policy "fail") or record the clip (policy "skip")."""
        if self.policy == "fail":
            raise AudioError(f"{error} [example {index}; config.data.on_bad_clip='skip' "
                             "skips bad clips]") from error
        self[index] = str(error)

    def report(self, *, total: int, train: bool) -> None:
        """One line: how many of the `total` clips are skipped, with the first reason."""
        if self:
            tqdm.write(f"{len(self)} of {total} {'train' if train else 'eval'} clips are bad "
                       f"and skipped, e.g. {next(iter(self.values()))}")


def host_share(total: int, *, what: str, process_index: int | None,
               process_count: int | None) -> tuple[int, int]:
    """(this host's index, its share of `total`) for a global batch of `total` clips or
    rows split over the hosts (process index and count default to jax's); `what` names
    the setting in the error when `total` does not split."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if total % process_count:
        raise ValueError(f"{what}={total} must be a multiple of the number of hosts "
                         f"({process_count}): each host builds an equal share of a batch")
    return process_index, total // process_count


def save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write a feature cache .npz atomically: into a temporary file named by this process
    (hosts sharing a cache_dir may write the same file at once), then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def fbank_moments(source, *, frontend, on_bad_clip: str, process_index: int = 0,
                  process_count: int = 1) -> np.ndarray:
    """(3,) float64 [cells, sum, sum of squares] of the un-normalised log-mel fbank of this
    host's clips of `source` (clips process_index, process_index + process_count, ...):
    every frame and bin of each whole clip, neither padded nor cropped, so padded and
    packed runs get the same statistics. Summed over the hosts they give the training
    set's mean and std (config.data.auto_stats). Bad clips are skipped ("skip") or raise
    ("fail"), as the pipelines do; dither draws as in data.pipeline."""
    moments = np.zeros(3, np.float64)
    indices = range(process_index, len(source), process_count)
    for i in tqdm(indices, desc="fbank statistics (train)", leave=False):
        try:
            wave = np.asarray(source[i]["audio"], np.float32)
        except AudioError:
            if on_bad_clip == "fail":
                raise
            continue
        rng = np.random.default_rng([0, i]) if frontend.dither > 0 else None
        x = np.asarray(fbank(wave, frontend=frontend, rng=rng), np.float64)
        moments += (x.size, x.sum(), np.square(x).sum())
    return moments
