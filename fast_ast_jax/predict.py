"""Top-k labels for many audio files with a trained checkpoint of any kind.

    python -m fast_ast_jax.predict clip.wav recordings/ "more/*.flac" --checkpoint WORKDIR
        [--list files.txt] [--out predictions.csv|.jsonl] [--top_k 5] [--batch_size 8]
        [--hop_frames N] [--per_window] [--maps DIR [--tome_r R] [--keep_rate K]] [--debug]

Inputs and bad files: fast_ast_jax/file_commands.py (one `error:` line per file that
cannot be read, the count of failures last, exit status 1 when any failed; 2 for a wrong
checkpoint path). Decoding, batched windows and their aggregation:
fast_ast_jax/inference.py (the same in Python: `fast_ast_jax.inference.predict_files`).
`--per_window` also prints each window's top labels; `--out` writes one row per file
(fast_ast_jax/result_files.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fast_ast_jax import checkpoints, cli, maps
from fast_ast_jax.audio.io import load_audio
from fast_ast_jax.file_commands import FileLoop, file_arguments, input_files
from fast_ast_jax.inference import predict_files
from fast_ast_jax.models.ast import Encoder
from fast_ast_jax.result_files import PredictionTable


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
    with cli.user_errors(debug=args.debug):  # a bad --out name or folder, before the work
        table = PredictionTable(args.out, top_k=args.top_k) if args.out else None
    fmt = lambda top: ", ".join(f"{label} {score:.3f}" for label, score in top)
    loop = FileLoop(total=len(files))
    try:
        for r in loop(predict_files(files, checkpoint=bundle, top_k=args.top_k,
                                    batch_size=args.batch_size, hop_frames=args.hop_frames,
                                    workers=args.workers, debug=args.debug, **overrides)):
            if table:
                table.write(r)
            if r.error is not None:
                continue
            print(f"{r.file}: {fmt(r.top)}")
            if args.per_window:
                for t0, t1, wtop in r.windows:
                    print(f"  {t0:8.2f}-{t1:8.2f} s: {fmt(wtop)}")
            if args.maps:
                wave = load_audio(r.file, sample_rate=bundle.frontend.sample_rate)
                for path in maps.write_maps(bundle, wave, directory=args.maps,
                                            name=Path(r.file).stem, **overrides):
                    print(f"  map: {path}")
    finally:
        if table:
            table.close()
    return loop.exit_status()


if __name__ == "__main__":
    sys.exit(main())
