"""FSDD: packed native-length ElasticAST training vs the padded AST (configs/fsdd.py).

    python benchmarks/fsdd_elastic.py --split fold --padded /tmp/fsdd_table/ast \
        --workdir /tmp/fsdd_elastic --set data.cache_dir=/tmp/fsdd_features --out table.md

Trains (or resumes) configs/fsdd_elastic.py in --workdir, then reports for both models:
- training throughput in *real* clips/s: the median of train/clips_per_s over the run's
  log windows (metrics.jsonl; the first window, with compilation, is left out), and the
  real-token fraction of what the model processes (padded: a clip's patches that hold audio
  / the 8 x 8 grid of 128 frames; packed: real tokens / row places over a training epoch);
- accuracy on the split's eval set at every hop x length cap of the elastic config's
  evaluation table (eval_hops_ms x eval_max_frames). The padded AST sees the fbank at that
  hop padded or cut to its fixed 128 frames, with the frames past the cap blanked (its
  training hop is 10 ms and length 128); the elastic model packs each clip at that hop, up to
  the cap. The elastic model is also evaluated with ToMe (--r merges per block and clip).

The padded checkpoint must come from the same split (benchmarks/fsdd_fastast.py's ast/ or
`train.py --config configs/fsdd.py:<split>`). --set KEY=VALUE overrides the elastic config.
Training throughputs come from two separate runs: on a shared machine they carry its load.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fsdd_fastast import emit, override  # noqa: E402
from fast_ast_jax.train.config import recipe  # noqa: E402


def train_clips_per_s(workdir: Path) -> float:
    """Median train/clips_per_s of a run's log windows, the first (compiling) one left out."""
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/clips_per_s"] for r in rows if "train/clips_per_s" in r]
    if not rates:
        raise SystemExit(f"{workdir}/metrics.jsonl has no train/clips_per_s")
    return float(np.median(rates[1:] or rates))


def padded_real_fraction(pipeline) -> float:
    """Patches of the padded grid that cover a clip's audio, averaged over the source."""
    from fast_ast_jax.audio.fbank import num_frames

    fe, model_frames, patch = pipeline.frontend, pipeline.frontend.target_frames, 16
    full = (model_frames - patch) // patch + 1
    real = []
    for i in range(len(pipeline.source)):
        n = num_frames(len(pipeline.source[i]["audio"]), window_size=fe.window_size,
                       hop_size=fe.hop_size)
        real.append(max(1, (min(max(n, patch), model_frames) - patch) // patch + 1) / full)
    return float(np.mean(real))


def padded_table(restored, run, *, hops_ms, caps) -> dict[tuple[float, int], float]:
    """Accuracy of a padded AST on fbanks at each hop, blanked after each cap (frames)."""
    from fast_ast_jax import sharding
    from fast_ast_jax.train.forward import evaluate
    from fast_ast_jax.train.task import build_pipeline

    mesh = sharding.make_mesh()
    out = {}
    for hop in hops_ms:
        fe = dataclasses.replace(restored.frontend, frame_shift_ms=hop,
                                 frame_length_ms=max(restored.frontend.frame_length_ms, hop))
        pipeline = build_pipeline(dataclasses.replace(run, frontend=fe), "eval", train=False)
        fill = (0.0 - fe.mean) / (2 * fe.std)  # a padded frame, normalised
        full = pipeline.batch
        for cap in caps:
            def capped(epoch, index, cap=cap):
                batch = dict(full(epoch, index))
                batch["x"] = batch["x"].copy()  # never write into the feature cache
                batch["x"][:, cap:, :] = fill
                return batch

            pipeline.batch = capped
            out[(float(hop), int(cap))] = evaluate(
                restored.params, model=restored.model, pipeline=pipeline, mesh=mesh,
                multi_label=restored.loss == "sigmoid",
                desc=f"padded {hop:g} ms / {cap}")["accuracy"]
    return out


def run(args) -> str:
    from fast_ast_jax import checkpoints
    from fast_ast_jax.train.evaluation import evaluate_checkpoint
    from fast_ast_jax.train.loop import train_and_evaluate
    from fast_ast_jax.train.spec import checkpoint_run, read_config
    from fast_ast_jax.train.task import build_pipeline, make_task

    work, padded_dir = Path(args.workdir), Path(args.padded)
    config = override(recipe(ROOT / "configs" / "fsdd_elastic.py", args.split), args.set)
    train_and_evaluate(config, str(work))
    e = config.elastic
    settings = [{}] + ([{"tome_r": args.r}] if args.r else [])
    packed_rows = evaluate_checkpoint(work, config=config, settings=settings, echo=None)
    restored = checkpoints.load(padded_dir)
    pad_run = checkpoint_run(restored)
    grid = [(float(h), int(c)) for h in e.eval_hops_ms for c in e.eval_max_frames]
    padded_acc = padded_table(restored, pad_run, hops_ms=e.eval_hops_ms,
                              caps=e.eval_max_frames)

    train_packed = make_task(read_config(config), workdir=work).train
    train_padded = build_pipeline(pad_run, "train", train=True)
    rates = {"padded": train_clips_per_s(padded_dir), "packed": train_clips_per_s(work)}
    real = {"padded": padded_real_fraction(train_padded),
            "packed": train_packed.efficiency(0)}

    import jax

    head = " | ".join(f"{h:g} ms / {c}" for h, c in grid)
    lines = [f"### FSDD ({args.split} split): packed ElasticAST vs padded AST", "",
             f"`python benchmarks/fsdd_elastic.py {shlex.join(sys.argv[1:])}`  ",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{jax.devices()[0].device_kind}", "",
             "| model | train real clips/s | real tokens | " + head + " |",
             "|---|---:|---:|" + "---:|" * len(grid)]
    lines.append(f"| padded AST (10 ms, 128 frames) | {rates['padded']:.1f} | "
                 f"{real['padded']:.3f} | "
                 + " | ".join(f"{padded_acc[k]:.4f}" for k in grid) + " |")
    for setting in settings:
        rows = {(r["hop_ms"], r["max_frames"]): r["accuracy"] for r in packed_rows
                if all(r.get(k) == v for k, v in setting.items())
                and ("tome_r" in r) == bool(setting)}
        name = "packed ElasticAST" + (f" + ToMe r={setting['tome_r']}" if setting else "")
        speed = (f"{rates['packed']:.1f} ({rates['packed'] / rates['padded']:.2f}x)"
                 if not setting else "—")
        lines.append(f"| {name} | {speed} | {real['packed']:.3f} | "
                     + " | ".join(f"{rows[k]:.4f}" for k in grid) + " |")
    lines += ["", "Columns after the first three: eval accuracy at hop / length cap (frames).",
              f"Padded-run log: {padded_dir}/metrics.jsonl; packed: {work}/metrics.jsonl."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="elastic run (trained or resumed)")
    parser.add_argument("--padded", required=True, help="padded AST workdir, same split")
    parser.add_argument("--split", default="fold", choices=["official", "fold"])
    parser.add_argument("--r", type=int, default=4, help="ToMe r for the packed model (0: off)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="elastic config override (repeatable)")
    parser.add_argument("--out", help="write the markdown table here too")
    args = parser.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
