"""Top-k labels for many audio files with a trained checkpoint of any kind.

    python -m fast_ast_jax.predict clip.wav recordings/ "more/*.flac" --checkpoint WORKDIR
        [--list files.txt] [--out predictions.csv|.jsonl] [--top_k 5] [--batch_size 8]
        [--hop_frames N] [--per_window] [--maps DIR [--tome_r R] [--keep_rate K]] [--debug]

Inputs: files, folders (searched recursively for audio extensions), glob patterns (quoted
ones are expanded here) and `--list` files of paths (one a line). Files of any format, sample
rate and channel count are decoded in a background thread pool, downmixed and resampled by
the checkpoint's own front-end, whose fbank is then made on the accelerator in the model's
compiled program (on a CPU-only machine: on the host, where it is cheaper;
fast_ast_jax.windows).

Scoring: windows of consecutive files share fixed-size batches (one compilation for any
number of files and lengths; a file's scores do not depend on its batch-mates). A padded
model (AST, CNN teacher) sees a clip up to its trained length as one input, padded as in
training, and a longer one as sliding windows of that length every `--hop_frames` frames
(default half a window); an ElasticAST sees a clip at its own length, packed alone into one
row, with windows only past the row's length. Window scores are aggregated
(fast_ast_jax.windows): softmax of the mean window logits (single-label) or the max over
windows of the sigmoids (multi-label). `--per_window` also prints each window's top labels.

Bad files do not stop the run: each unreadable, empty, NaN/Inf, missing file or directory
gets one `error:` line on stderr (a traceback only with `--debug`), every other file its
prediction; the last line counts the failures and the exit status is 1 when any file failed
(2 for a wrong checkpoint path).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from fast_ast_jax import checkpoints, cli, maps
from fast_ast_jax.audio.io import AudioError, audio_files, load_audio
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models.ast import Encoder
from fast_ast_jax.windows import ClipScores, Scorer, ordered_map, scorer, windowed_scores

Top = list[tuple[str, float]]


@dataclasses.dataclass
class FileResult:
    """One input file: its top-k (label, score) pairs (best first), duration (s), and per
    window (start_s, end_s, top-k); or the reason it could not be scored."""

    file: str
    top: Top = dataclasses.field(default_factory=list)
    duration: float | None = None
    windows: list[tuple[float, float, Top]] = dataclasses.field(default_factory=list)
    error: str | None = None


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
    """`scorer`'s outputs for each file, in order, lazily (predict and fast_ast_jax.embed):
    files are decoded by `workers` threads at the scorer's sample rate; one that cannot be
    read gets its `error` (the message; with `debug`, the traceback) and the others go on."""
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


class _Table:
    """--out rows: file, top-k labels and scores, duration, windows, error (.csv / .jsonl)."""

    def __init__(self, path: str, top_k: int):
        suffix = Path(path).suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            cli.fail(f"--out {path}: use a .csv or .jsonl file name")
        self.jsonl, self.top_k = suffix == ".jsonl", top_k
        self._file = open(path, "w", newline="")
        if not self.jsonl:
            self._csv = csv.writer(self._file)
            self._csv.writerow(["file"] + [f"{kind}_{i + 1}" for i in range(top_k)
                                           for kind in ("label", "score")]
                               + ["duration_s", "windows", "error"])

    def write(self, r: FileResult) -> None:
        if self.jsonl:
            self._file.write(json.dumps({
                "file": r.file, "labels": [label for label, _ in r.top],
                "scores": [score for _, score in r.top], "duration_s": r.duration,
                "windows": len(r.windows), "error": r.error}) + "\n")
            return
        cells = [c for label, score in r.top for c in (label, f"{score:.6g}")]
        cells += [""] * (2 * self.top_k - len(cells))
        self._csv.writerow([r.file, *cells, "" if r.duration is None else f"{r.duration:.3f}",
                            len(r.windows), r.error or ""])

    def close(self) -> None:
        self._file.close()


def file_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str) -> None:
    """The arguments of every many-file command (predict, embed): inputs, --list,
    --checkpoint, --batch_size, --hop_frames, --workers, --debug."""
    parser.add_argument("inputs", nargs="*", help="audio files, folders or glob patterns")
    parser.add_argument("--list", help="a text file of audio paths, one a line")
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--batch_size", type=int, default=8, help="windows per model call")
    parser.add_argument("--hop_frames", type=int, default=None,
                        help="frames between windows of long clips (default: half a window)")
    parser.add_argument("--workers", type=int, default=4, help="decoding threads")
    parser.add_argument("--debug", action="store_true",
                        help="tracebacks for failed files and usage errors")


def input_files(args: argparse.Namespace) -> list[str]:
    """The audio files that `file_arguments` name; no input or a missing --list file is a
    usage error (cli.fail)."""
    if not args.inputs and not args.list:
        cli.fail("no input: give audio files, folders, glob patterns or --list FILE")
    if args.list and not Path(args.list).is_file():
        cli.fail(f"--list {args.list} does not exist")
    return expand_inputs(args.inputs, list_file=args.list)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0; 1 when a file failed; 2 usage)."""
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.predict",
                                     description=__doc__.splitlines()[0])
    file_arguments(parser, checkpoint_help="training workdir, checkpoints/, or an HF / "
                   ".pth weights path")
    parser.add_argument("--out", help="also write one row per file to this .csv or .jsonl")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--per_window", action="store_true",
                        help="also print every window's top labels with its times")
    parser.add_argument("--maps", help="write ToMe merge / TopK kept-patch PNG maps of each "
                        "file's first window into this directory")
    parser.add_argument("--tome_r", type=int, default=None, help="ToMe: tokens merged per block")
    parser.add_argument("--keep_rate", type=float, default=None, help="TopK pruning keep rate")
    args = parser.parse_args(argv)
    files = input_files(args)
    overrides = {k: v for k, v in (("tome_r", args.tome_r), ("prune_keep_rate", args.keep_rate))
                 if v is not None}
    with cli.user_errors(debug=args.debug):
        bundle = checkpoints.load_classifier(args.checkpoint)
    if (args.maps or overrides) and not isinstance(bundle.model, Encoder):
        cli.fail(f"--maps / --tome_r / --keep_rate need an AST or ElasticAST; "
                 f"{args.checkpoint} holds a {type(bundle.model).__name__}")
    table = _Table(args.out, args.top_k) if args.out else None
    fmt = lambda top: ", ".join(f"{label} {score:.3f}" for label, score in top)
    failed = 0
    progress = tqdm(total=len(files), unit="file", disable=len(files) < 20 or None,
                    file=sys.stderr)
    try:
        for r in predict_files(files, checkpoint=bundle, top_k=args.top_k,
                               batch_size=args.batch_size, hop_frames=args.hop_frames,
                               workers=args.workers, debug=args.debug, **overrides):
            progress.update()
            if table:
                table.write(r)
            if r.error is not None:
                failed += 1
                progress.write(f"error: {r.error}", file=sys.stderr)
                continue
            print(f"{r.file}: {fmt(r.top)}")
            if args.per_window:
                for t0, t1, wtop in r.windows:
                    print(f"  {t0:8.2f}-{t1:8.2f} s: {fmt(wtop)}")
            if args.maps:
                for path in maps.write_maps(bundle, load_audio(r.file, sample_rate=(
                        bundle.frontend.sample_rate)), directory=args.maps,
                        name=Path(r.file).stem, **overrides):
                    print(f"  map: {path}")
    finally:
        progress.close()
        if table:
            table.close()
    if failed:
        print(f"{failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
