"""python -m fast_ast_jax.recipe --data clips.csv --workdir W: the small-data recipe
(masked pretraining -> fine-tuning -> a distilled ToMe student [-> export]) as one
resumable command; fast_ast_jax/recipe/run.py describes the workdir."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fast_ast_jax import cli
from fast_ast_jax.recipe.configs import STAGES, STUDENT_INITS
from fast_ast_jax.recipe.run import StageStopped, command_line, run_recipe


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m fast_ast_jax.recipe", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="CSV with columns filename,label[,...] (one labeled clip a row)")
    parser.add_argument("--workdir", required=True,
                        help="folder of the run: a new one, or the same again to continue")
    parser.add_argument("--audio_dir", help="folder the filenames are relative to "
                        "(default: the CSV's folder)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--eval", dest="eval_select", metavar="COLUMN=VALUE",
                       help="the eval split: rows with this value (e.g. fold=test); the "
                       "other rows train")
    split.add_argument("--holdout", type=float, default=0.2,
                       help="without --eval: hold out this fraction of each label "
                       "(seeded, the same split for every --seed; default 0.2)")
    parser.add_argument("--unlabeled", nargs="+", default=[], metavar="DIR",
                        help="folders of extra audio for the pretraining only")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--no_student", dest="student", action="store_false",
                        help="stop after the fine-tuning (no ToMe student)")
    parser.add_argument("--student_init", choices=STUDENT_INITS, default="finetune",
                        help="the student's initial weights (default: the fine-tuned model)")
    parser.add_argument("--export", action="store_true",
                        help="also export the last classifier (W/export/model.jaxexport)")
    parser.add_argument("--force", choices=STAGES,
                        help="delete this stage and the ones after it, and train them again")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="[STAGE.]FIELD=VALUE",
                        help="override a config field of one stage (or of all), e.g. "
                        "finetune.num_epochs=50; repeatable")
    parser.add_argument("--debug", action="store_true", help="tracebacks of usage errors")
    args = parser.parse_args(argv)
    with cli.user_errors(debug=args.debug):
        try:
            run_recipe(data=args.data, workdir=args.workdir, audio_dir=args.audio_dir,
                       eval_select=args.eval_select, holdout=args.holdout,
                       unlabeled=args.unlabeled, seed=args.seed, student=args.student,
                       student_init=args.student_init, overrides=args.overrides,
                       force=args.force, export=args.export, command=command_line(argv))
        except StageStopped as e:
            print(f"recipe: {e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
