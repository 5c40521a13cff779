"""What the many-file commands (predict, embed) share: their arguments, their input files
and their main loop.

Inputs: files, folders (searched recursively for audio extensions), glob patterns (quoted
ones are expanded here) and `--list` files of paths (one a line). Bad files do not stop a
run: each unreadable, empty, NaN/Inf, missing file or directory gets one `error:` line on
stderr (a traceback only with `--debug`), every other file its result; the last line counts
the failures ("3 of 120 files failed") and the exit status is 1 when any file failed (2 for
a usage error: no input, a missing --list file, a wrong checkpoint path).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

from fast_ast_jax import cli
from fast_ast_jax.inference import expand_inputs


def file_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str) -> None:
    """The arguments of every many-file command: inputs, --list, --checkpoint,
    --batch_size, --hop_frames, --workers, --debug."""
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


R = TypeVar("R")  # a file's result: inference.FileResult or inference.Scored


class FileLoop:
    """The main loop of a many-file command:

        loop = FileLoop(total=len(files))
        for r in loop(results):  # every result, failed ones too (`error` set)
            ...                  # the command's own output
        return loop.exit_status()

    A progress bar on stderr (from 20 files), an `error: <reason>` line for each failed
    file; `exit_status` prints "N of M files failed" when any did and returns 1, else 0."""

    def __init__(self, *, total: int):
        self.total, self.failed = total, 0

    def __call__(self, results: Iterable[R]) -> Iterator[R]:
        progress = tqdm(total=self.total, unit="file", disable=self.total < 20 or None,
                        file=sys.stderr)
        try:
            for r in results:
                progress.update()
                if r.error is not None:
                    self.failed += 1
                    progress.write(f"error: {r.error}", file=sys.stderr)
                yield r
        finally:
            progress.close()

    def exit_status(self) -> int:
        if self.failed:
            print(f"{self.failed} of {self.total} files failed", file=sys.stderr)
        return 1 if self.failed else 0
