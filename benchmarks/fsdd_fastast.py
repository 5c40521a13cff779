"""The FSDD FastAST table: CNN teacher, AST baseline, AST + off-the-shelf ToMe, AST trained
with ToMe, AST trained with ToMe + CMKD (distilled from the CNN teacher's logits).

    python benchmarks/fsdd_fastast.py --split official --workdir /tmp/fsdd_table \
        --set data.cache_dir=/tmp/fsdd_features --out /tmp/fsdd_table/table.md

Runs, in `workdir`: cnn/ (configs/fsdd_teacher_cnn.py), its training-split logits
(`distill dump`, cnn/teacher_train.npz), ast/ (configs/fsdd.py), ast_tome/
(configs/fsdd_fastast.py without a teacher) and ast_tome_kd/ (configs/fsdd_fastast.py with
the teacher file); with --ensemble also ast/teacher_train.npz, ensemble_train.npz (the mean
of the CNN's and the AST baseline's logits, `distill ensemble`) and ast_tome_kd_ens/ (the
student distilled from that ensemble), plus a row for the ensemble teacher itself (accuracy
of the mean eval logits). Training resumes from existing checkpoints, so a re-run only
evaluates.
Every row is evaluated on the split's eval set with fast_ast_jax.train.evaluation:
accuracy, GMACs per clip (AST: analytic count of the token plan; CNN: XLA's flop count / 2,
marked "≈"), clips/s of the jitted forward pass (eval batch, compilation excluded), and
speedup = clips/s over the AST baseline's. Rows are timed one after another in this
process, so load changes on a shared machine show up in the speedups; GMAC ratios do not.

--set KEY=VALUE overrides a config field in every run (e.g. num_steps=2, model.depth=1);
--cnn-set only in the teacher's. The markdown (docs/RESULTS.md-ready) goes to --out and
stdout.
"""
from __future__ import annotations

import argparse
import ast as pyast
import datetime
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fast_ast_jax import teacher_logits  # noqa: E402
from fast_ast_jax.train.dump import dump  # noqa: E402
from fast_ast_jax.train.config import recipe  # noqa: E402


def override(config, assignments):
    """Apply "a.b=value" strings (value parsed as a Python literal, else kept as a string)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: use KEY=VALUE")
        try:
            value = pyast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, last = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if last not in node:
            raise KeyError(f"--set {item!r}: config has no field {key!r}")
        node[last] = value
    return config


def train(name, split, workdir, sets):
    from fast_ast_jax.train.loop import train_and_evaluate

    c = override(recipe(ROOT / "configs" / f"{name}.py", split), sets)
    train_and_evaluate(c, str(workdir))
    return c


def evaluate(workdir, settings=({},)):
    from fast_ast_jax.train.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(workdir, settings=list(settings), echo=None)


def run(args) -> str:
    work = Path(args.workdir)
    rows = []
    # 1. CNN teacher and its logits on the training split.
    train("fsdd_teacher_cnn", args.split, work / "cnn", args.set + args.cnn_set)
    (cnn,) = evaluate(work / "cnn")
    rows.append(("CNN teacher", cnn, f"≈{cnn['xla_flops'] / 2e9:.3f} (XLA flops / 2)"))
    logits = work / "cnn" / "teacher_train.npz"
    dump(work / "cnn", out=logits, split="train")
    # 2. AST baseline, and the same checkpoint with ToMe switched on at evaluation.
    fastast = override(recipe(ROOT / "configs" / "fsdd_fastast.py", args.split), args.set)
    r = args.r if args.r is not None else fastast.model.tome_r
    train("fsdd", args.split, work / "ast", args.set)
    base, tome = evaluate(work / "ast", [{"tome_r": 0}, {"tome_r": r}])
    rows.append(("AST baseline", base, None))
    rows.append((f"AST + off-the-shelf ToMe (r={r})", tome, None))
    # 3. Trained with ToMe, without and with distillation.
    sets = args.set + [f"model.tome_r={r}"]
    train("fsdd_fastast", args.split, work / "ast_tome", sets + ["distill.teacher_logits=''"])
    rows.append((f"AST trained with ToMe (r={r})", evaluate(work / "ast_tome")[0], None))
    kd = train("fsdd_fastast", args.split, work / "ast_tome_kd",
               sets + [f"distill.teacher_logits={str(logits)!r}"])
    rows.append((f"AST trained with ToMe (r={r}) + CMKD (lam={kd.distill.lam}, "
                 f"tau={kd.distill.tau})", evaluate(work / "ast_tome_kd")[0], None))
    if args.ensemble:  # 4. a stronger teacher: the CNN and the AST baseline together
        dump(work / "ast", out=work / "ast" / "teacher_train.npz", split="train")
        ens = work / "ensemble_train.npz"
        teacher_logits.ensemble([logits, work / "ast" / "teacher_train.npz"], out=ens)
        rows.insert(2, ("CNN + AST baseline ensemble (teacher, mean logits)",
                        ensemble_row(work), "CNN + AST"))
        train("fsdd_fastast", args.split, work / "ast_tome_kd_ens",
              sets + [f"distill.teacher_logits={str(ens)!r}"])
        rows.append((f"AST trained with ToMe (r={r}) + KD from the ensemble",
                     evaluate(work / "ast_tome_kd_ens")[0], None))
    return markdown(rows, base_rate=base["clips_per_s"], args=args)


def ensemble_row(work: Path) -> dict:
    """Accuracy of the mean of the CNN's and the AST baseline's eval-split logits (its
    clips/s is not measured: the two models run one after the other)."""
    import numpy as np

    from fast_ast_jax.data import source_ids
    from fast_ast_jax.checkpoints import load as load_checkpoint
    from fast_ast_jax.train.spec import checkpoint_run
    from fast_ast_jax.train.task import build_pipeline

    members = []
    for name in ("cnn", "ast"):
        out = work / name / "teacher_eval.npz"
        dump(work / name, out=out, split="eval")
        members.append(teacher_logits.load(out))
    logits = np.mean([m.lookup(members[0].ids) for m in members], axis=0)
    restored = load_checkpoint(work / "ast")
    pipeline = build_pipeline(checkpoint_run(restored), "eval", train=False)
    label = {cid: int(np.argmax(example[1]))
             for i, cid in enumerate(source_ids(pipeline.source))
             if (example := pipeline.example(i)) is not None}
    accuracy = float(np.mean([np.argmax(row) == label[cid]
                              for row, cid in zip(logits, members[0].ids) if cid in label]))
    return {"accuracy": accuracy, "clips_per_s": float("nan")}


def markdown(rows, *, base_rate, args) -> str:
    import jax

    lines = [f"### FSDD ({args.split} split): FastAST table",
             "",
             f"`python benchmarks/fsdd_fastast.py {shlex.join(sys.argv[1:])}`  ",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
             f"{platform.processor() or platform.machine()}",
             "",
             "| model | accuracy | GMACs / clip | clips/s | speedup |",
             "|---|---:|---:|---:|---:|"]
    for name, row, macs in rows:
        macs = macs or f"{row['macs'] / 1e9:.3f}"
        rate = row["clips_per_s"]
        speed = (f"{rate:.1f} | {rate / base_rate:.2f}x" if rate == rate  # nan: not timed
                 else "— | —")
        lines.append(f"| {name} | {row['accuracy']:.4f} | {macs} | {speed} |")
    lines += ["", "clips/s: jitted forward on the eval set, compilation excluded, rows timed "
              "one after another; speedup over the AST baseline."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="official", choices=["official", "fold"])
    parser.add_argument("--r", type=int, default=None,
                        help="ToMe r (default: configs/fsdd_fastast.py's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable)")
    parser.add_argument("--cnn-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the CNN teacher only (repeatable)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also distil from the CNN + AST-baseline logit ensemble")
    parser.add_argument("--out", help="write the markdown table here too")
    args = parser.parse_args(argv)
    emit(run(args), args.out)


def emit(table: str, out: str | None) -> None:
    """Print a markdown table, and write it to `out` too when given."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")


if __name__ == "__main__":
    main()
