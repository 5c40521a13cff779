"""Inference on many audio files: files -> per-file scores -> top-k labels.

    >>> from fast_ast_jax.inference import predict, predict_files
    >>> predict(["a.wav", "b.flac"], checkpoint="workdirs/fsdd", top_k=3)
    [[("seven", 0.91), ("one", 0.04), ...], ...]

The file engine (`score_files`, shared by predictions and fast_ast_jax.embeddings): files
of any format, sample rate and channel count are decoded in a background thread pool,
downmixed and resampled by the checkpoint's own front-end and scored through a
`windows.Scorer`, whose fbank is made on the accelerator in the model's compiled program
(on a CPU-only machine: on the host, where it is cheaper; fast_ast_jax.windows). Windows of
consecutive files share fixed-size batches (one compilation for any number of files and
lengths; a file's scores do not depend on its batch-mates). A padded model (AST, CNN
teacher) sees a clip up to its trained length as one input, padded as in training, and a
longer one as sliding windows of that length every `hop_frames` frames (default half a
window); an ElasticAST sees a clip at its own length, packed alone into one row, with
windows only past the row's length. Window scores are aggregated (fast_ast_jax.windows):
softmax of the mean window logits (single-label) or the max over windows of the sigmoids
(multi-label).

Bad files do not stop the engine: an unreadable, empty, NaN/Inf or missing file, or a
directory, gets its `error` (one line; the traceback with `debug`) and the others go on.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import traceback
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fast_ast_jax import checkpoints
from fast_ast_jax.audio.io import AudioError, audio_files, load_audio
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.windows import ClipScores, Scorer, ordered_map, scorer, windowed_scores

Top = list[tuple[str, float]]


def expand_inputs(paths: Sequence[str | os.PathLike], *,
                  list_file: str | os.PathLike | None = None) -> list[str]:
    """The files named by arguments, in order: a directory -> its audio files (recursive,
    sorted; one without any stays, to be reported); a glob pattern -> its matches (sorted);
    anything else as given (a missing path is reported when it is read). `list_file` adds
    one path per line (blank lines and lines starting with # skipped)."""
    paths = [str(p) for p in paths]
    if list_file is not None:
        lines = Path(list_file).read_text().splitlines()
        paths += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    files = []
    for p in paths:
        if Path(p).is_dir():
            found = [str(f) for f in audio_files(p)]
            files += found or [p]  # a folder without audio is reported, not skipped
        elif not Path(p).exists() and glob.has_magic(p):
            files += sorted(glob.glob(p, recursive=True)) or [p]
        else:
            files.append(p)
    return files


@dataclasses.dataclass
class Scored:
    """One input file: its duration (s) and the scorer's aggregated and per-window outputs
    (windows.ClipScores), or the reason it could not be read."""

    file: str
    duration: float | None = None
    clip: ClipScores | None = None
    error: str | None = None


def score_files(files: Sequence[str | os.PathLike], *, scorer: Scorer,
                hop_frames: int | None = None, workers: int = 4, debug: bool = False
                ) -> Iterator[Scored]:
    """`scorer`'s outputs for each file, in order, lazily: files are decoded by `workers`
    threads at the scorer's sample rate; one that cannot be read gets its `error` (the
    message; with `debug`, the traceback) and the others go on."""
    sr = scorer.frontend.sample_rate
    results: list[Scored] = []
    scored: list[int] = []  # results[scored[k]] gets the k-th clip's outputs

    def waves() -> Iterator[np.ndarray]:
        for f, wave, error in ordered_map(lambda f: load_audio(f, sample_rate=sr),
                                          [str(f) for f in files], workers=workers):
            if error is not None:
                results.append(Scored(file=f, error=_reason(error, debug)))
                continue
            results.append(Scored(file=f, duration=len(wave) / sr))
            scored.append(len(results) - 1)
            yield wave

    emitted = 0
    for k, clip in enumerate(windowed_scores(waves(), scorer=scorer, hop_frames=hop_frames,
                                             workers=workers)):
        results[scored[k]].clip = clip
        while emitted <= scored[k]:  # failed files before this one are complete too
            yield results[emitted]
            emitted += 1
    yield from results[emitted:]


def _reason(error: Exception, debug: bool) -> str:
    if debug:
        return "".join(traceback.format_exception(error)).rstrip()
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return message if isinstance(error, AudioError) else f"{type(error).__name__}: {message}"


@dataclasses.dataclass
class FileResult:
    """One input file: its top-k (label, score) pairs (best first), duration (s), and per
    window (start_s, end_s, top-k); or the reason it could not be scored."""

    file: str
    top: Top = dataclasses.field(default_factory=list)
    duration: float | None = None
    windows: list[tuple[float, float, Top]] = dataclasses.field(default_factory=list)
    error: str | None = None


def _top(labels: Sequence[str], scores: np.ndarray, k: int) -> Top:
    return [(labels[i], float(scores[i]))
            for i in np.argsort(-scores, kind="stable")[:min(k, len(labels))]]


def predict_files(files: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike | Bundle,
                  top_k: int = 5, batch_size: int = 8, hop_frames: int | None = None,
                  workers: int = 4, debug: bool = False, on_device: bool | None = None,
                  **overrides) -> Iterator[FileResult]:
    """A FileResult per file, in order, lazily; a file that cannot be read or scored gets
    its `error` (the message; with `debug`, the traceback) and the others go on.

    Args:
        files: audio paths.
        checkpoint: training workdir / checkpoints dir / HF or .pth path, or a loaded Bundle.
        top_k: labels per file and window.
        batch_size: windows per model call (a fixed shape: one compilation).
        hop_frames: frames between windows of clips longer than one window.
        workers: threads decoding the next files (and, with host features, threads
            computing their features) while the model runs.
        on_device: features made on the device (`windows.scorer`; default: unless the
            backend is the CPU).
        **overrides: model fields for this run (tome_r=8, prune_keep_rate=0.7, ...).
    """
    bundle = (checkpoint if isinstance(checkpoint, Bundle)
              else checkpoints.load_classifier(checkpoint))
    sc = scorer(bundle, batch_size=batch_size, on_device=on_device, **overrides)
    for s in score_files(files, scorer=sc, hop_frames=hop_frames, workers=workers,
                         debug=debug):
        r = FileResult(file=s.file, duration=s.duration, error=s.error)
        if s.clip is not None:
            r.top = _top(bundle.labels, s.clip.scores, top_k)
            r.windows = [(t0, t1, _top(bundle.labels, p, top_k))
                         for t0, t1, p in s.clip.windows]
        yield r


def predict(files: Sequence[str | os.PathLike], *, checkpoint, top_k: int = 5,
            batch_size: int = 8, hop_frames: int | None = None, **overrides) -> list[Top]:
    """For each file, its `top_k` (label, score) pairs, best first (windows aggregated).

    Raises:
        AudioError: for the first file that cannot be read (use `predict_files` to go on).
    """
    return [pair[0] for pair in predict_windows(files, checkpoint=checkpoint, top_k=top_k,
                                                batch_size=batch_size, hop_frames=hop_frames,
                                                **overrides)]


def predict_windows(files: Sequence[str | os.PathLike], *, checkpoint, top_k: int = 5,
                    batch_size: int = 8, hop_frames: int | None = None, **overrides
                    ) -> Iterator[tuple[Top, list[tuple[float, float, Top]]]]:
    """Per file: (aggregated top-k, [(start_s, end_s, window top-k), ...]), lazily.

    Raises:
        AudioError: for the first file that cannot be read.
    """
    for r in predict_files(files, checkpoint=checkpoint, top_k=top_k, batch_size=batch_size,
                           hop_frames=hop_frames, **overrides):
        if r.error is not None:
            raise AudioError(r.error)
        yield r.top, r.windows
