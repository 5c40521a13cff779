"""Waveform in, logits (or embeddings) out: a checkpoint as one serialised StableHLO
function (jax.export; what the function takes and returns: fast_ast_jax/exported.py).

    python -m fast_ast_jax.export --checkpoint WORKDIR --out model.jaxexport \\
        [--embed [--tokens]] [--batch N] [--seconds S] [--platforms cpu,cuda,tpu]

Writes the artifact and, next to it, OUT.json: the labels (empty with --embed), the
front-end, the input spec and what the function outputs. The function takes waves
(B, samples) float32 at the checkpoint's sample rate (samples = --seconds worth; default:
the trained length) and their true lengths (B,) int32, and returns logits (B, num_labels);
--embed returns the clip embedding (B, W) of an AST or masked-pretraining (mae) checkpoint
instead (as `python -m fast_ast_jax.embed` computes it for one window), and --tokens the
pair (embedding, patch tokens (B, N, W)). B is any batch size unless --batch fixes it. A
server needs only jax: `jax.export.deserialize(open(OUT, "rb").read()).call(waves, lengths)`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from fast_ast_jax import cli
from fast_ast_jax.exported import PLATFORMS, export_checkpoint


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training workdir")
    parser.add_argument("--out", required=True, help="artifact path, e.g. model.jaxexport")
    parser.add_argument("--batch", type=int, default=None,
                        help="fixed batch size (default: any)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="input length (default: the trained length)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="comma-separated lowering targets")
    parser.add_argument("--embed", action="store_true",
                        help="export the clip embedding (B, W) instead of the logits (AST or "
                        "masked-pretraining checkpoints)")
    parser.add_argument("--tokens", action="store_true",
                        help="with --embed: also output the patch tokens (B, N, W)")
    parser.add_argument("--debug", action="store_true", help="tracebacks of usage errors")
    args = parser.parse_args(argv)
    with cli.user_errors(debug=args.debug):
        spec = export_checkpoint(args.checkpoint, args.out, batch=args.batch,
                                 seconds=args.seconds,
                                 platforms=tuple(p for p in args.platforms.split(",") if p),
                                 embedding=args.embed, tokens=args.tokens)
    print(f"wrote {args.out} (+ .json): waves ({spec['batch'] or 'B'}, {spec['samples']}) at "
          f"{spec['sample_rate']} Hz + lengths -> {'; '.join(spec['outputs'])}, "
          f"for {','.join(spec['platforms'])}")


if __name__ == "__main__":
    main()
