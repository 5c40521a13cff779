"""Embeddings of many audio files from an AST or a masked-pretraining (mae) checkpoint.

    python -m fast_ast_jax.embed clip.wav recordings/ "more/*.flac" --checkpoint WORKDIR
        --out embeddings.npz|embeddings.parquet [--tokens] [--list files.txt]
        [--batch_size 8] [--hop_frames N] [--debug]

Inputs, decoding and bad files as in `python -m fast_ast_jax.predict`
(fast_ast_jax/file_commands.py: one `error:` line per unreadable file, exit status 1 when
any failed). What is embedded: the clip embedding (W,), the mean of the class tokens of the
encoder on every patch, averaged over the clip's windows, and with --tokens each window's
patch tokens (f_dim * t_dim, W) (fast_ast_jax/embeddings.py; the same in Python:
`fast_ast_jax.embeddings.embed_files`). The .npz and .parquet layouts, and how to read the
tokens back: fast_ast_jax/result_files.py. The same function of a waveform, as one
serialised program for a server: `python -m fast_ast_jax.export --embed [--tokens]`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fast_ast_jax import checkpoints, cli
from fast_ast_jax.embeddings import embed_files, encoder
from fast_ast_jax.file_commands import FileLoop, file_arguments, input_files
from fast_ast_jax.result_files import EMBEDDING_SUFFIXES, check_suffix, write_embeddings


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0; 1 when a file failed; 2 usage)."""
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.embed",
                                     description=__doc__.splitlines()[0])
    file_arguments(parser, checkpoint_help="training workdir or checkpoints/ of an AST or "
                   "mae run")
    parser.add_argument("--out", required=True,
                        help="the .npz or .parquet file to write (fast_ast_jax/result_files.py)")
    parser.add_argument("--tokens", action="store_true",
                        help="also write every window's per-patch tokens")
    args = parser.parse_args(argv)
    with cli.user_errors(debug=args.debug):
        check_suffix(args.out, EMBEDDING_SUFFIXES)
    files = input_files(args)
    with cli.user_errors(debug=args.debug):
        bundle = checkpoints.load(args.checkpoint)
        encoder(bundle, where=args.checkpoint)  # an unsupported kind fails before decoding
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # as export does: not after the work
    loop = FileLoop(total=len(files))
    results = list(loop(embed_files(files, checkpoint=bundle, tokens=args.tokens,
                                    batch_size=args.batch_size, hop_frames=args.hop_frames,
                                    workers=args.workers, debug=args.debug)))
    written = write_embeddings(args.out, results, tokens=args.tokens,
                               grid=bundle.model.grid(), width=bundle.model.width)
    print(f"{len(results) - loop.failed} embeddings -> {' + '.join(written)}")
    return loop.exit_status()


if __name__ == "__main__":
    sys.exit(main())
