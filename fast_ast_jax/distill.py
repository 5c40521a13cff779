"""Teacher-logits files for distillation (format: fast_ast_jax/teacher_logits.py).

    python -m fast_ast_jax.distill dump --checkpoint WORKDIR [--config FILE[:ARG]] \\
        [--split train] --out teacher.npz [--top_k K] [--batch_size N] [--workers N]
    python -m fast_ast_jax.distill ensemble a.npz b.npz [...] --out teacher.npz [--top_k K]
    python -m fast_ast_jax.distill inspect teacher.npz

`dump` runs a checkpoint over a data split (fast_ast_jax.train.dump), `ensemble` averages
the logits of several files, `inspect` summarises one.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from fast_ast_jax import cli
from fast_ast_jax.teacher_logits import ensemble, load, summary
from fast_ast_jax.train.config import recipe
from fast_ast_jax.train.dump import dump


def config_file(spec: str):
    """FILE[:ARG] -> get_config(ARG) of that config file; a missing file -> cli.fail()."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        cli.fail(f"config file {path} does not exist")
    return recipe(path, arg or None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.distill",
                                     description="Teacher logits for distillation.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="compute a checkpoint's logits for a data split")
    d.add_argument("--checkpoint", required=True, help="training workdir or checkpoints/")
    d.add_argument("--config", help="data config FILE[:ARG] (default: the checkpoint's)")
    d.add_argument("--split", default="train", help="config.data split (default train)")
    d.add_argument("--out", required=True, help="output .npz")
    d.add_argument("--top_k", type=int, default=None, help="keep the k largest logits")
    d.add_argument("--batch_size", type=int, default=0, help="clips per forward pass")
    d.add_argument("--workers", type=int, default=None,
                   help="loader worker processes (default: the config's data.worker_count)")
    e = sub.add_parser("ensemble", help="average the logits of several teacher files")
    e.add_argument("files", nargs="+")
    e.add_argument("--out", required=True, help="output .npz")
    e.add_argument("--top_k", type=int, default=None, help="keep the k largest logits")
    i = sub.add_parser("inspect", help="summarise a teacher-logits file")
    i.add_argument("file")
    for p in (d, e, i):
        p.add_argument("--debug", action="store_true", help="tracebacks of usage errors")
    args = parser.parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 0:
        parser.error(f"--workers {args.workers}: give a count >= 0 (0 = in-process)")
    with cli.user_errors(debug=args.debug):
        if args.command == "dump":
            config = config_file(args.config) if args.config else None
            dump(args.checkpoint, out=args.out, config=config, split=args.split,
                 top_k=args.top_k, batch_size=args.batch_size, workers=args.workers)
        elif args.command == "ensemble":
            print(summary(ensemble(args.files, out=args.out, top_k=args.top_k)))
        else:
            print(summary(load(args.file)))


if __name__ == "__main__":
    main()
