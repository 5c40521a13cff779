"""The recipe's result table: every finished stage on the eval split, its forward MACs per
clip (fast_ast_jax.bench, analytic) and clips/s, all classifiers timed against each other in
one run (interleaved rounds, the 1-minute load average beside them), and where each
checkpoint is; written to W/results.md and W/results.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections

from fast_ast_jax import bench, checkpoints, models, sharding
from fast_ast_jax.train.forward import evaluate, time_forwards
from fast_ast_jax.train.spec import checkpoint_run
from fast_ast_jax.train.task import build_pipeline

WHAT = {"pretrain": "masked pretraining (eval: reconstruction loss)",
        "finetune": "fine-tuned AST (the teacher)",
        "student": "ToMe student, distilled from the teacher"}


def stage_results(stages: dict[str, tuple[Path, ml_collections.ConfigDict]], *,
                  rounds: int = bench.TIMING_ROUNDS) -> dict[str, Any]:
    """Evaluate each finished stage's checkpoint on its config's eval split.

    stages: name -> (stage folder, config), in stage order.
    Returns {"rows": [...], "load": (start, end), "rounds", "batch"}: a row per stage
    (stage, what, step, checkpoint, and "accuracy", "macs", "mac_ratio" (the fine-tuned
    model's MACs over the row's), "clips_per_s" for classifiers, "loss" for pretraining);
    when a student runs, also the fine-tuned model with the student's ToMe r applied
    off the shelf (no training), to show what the distillation adds.
    """
    mesh = sharding.make_mesh()
    load_start = os.getloadavg()[0]
    rows, timed, timing_pipeline = [], {}, None  # timed: row number -> (model, params)
    for name, (path, config) in stages.items():
        bundle = checkpoints.load(path)
        pipeline = build_pipeline(checkpoint_run(bundle, config), "eval", train=False)
        params = jax.device_put(bundle.params, sharding.param_shardings(bundle.params, mesh))
        at = {"step": bundle.step, "checkpoint": str(path)}
        variants = [({"stage": name, "what": WHAT[name], **at}, bundle.model)]
        if name == "finetune" and "student" in stages:
            r = int(stages["student"][1].model.tome_r)
            variants.append(({"stage": f"finetune + ToMe r={r}", "what": "the teacher with "
                              "the student's ToMe, not trained with it", **at},
                             bundle.model.clone(tome_r=r)))
        for row, model in variants:
            result = evaluate(params, model=model, pipeline=pipeline, mesh=mesh,
                              multi_label=bundle.multi_label, desc=f"eval {row['stage']}")
            if models.objective(model) == "reconstruct":
                row["loss"] = result["loss"]
            else:
                row.update(accuracy=result["accuracy"],
                           macs=float(bench.ast_macs(model).total))
                timed[len(rows)] = (model, params)
                timing_pipeline = timing_pipeline or pipeline  # every classifier's batch
            rows.append(row)
    rates, clips = {}, 0
    if timed:
        timings, clips = time_forwards(list(timed.values()), pipeline=timing_pipeline,
                                       mesh=mesh, rounds=rounds)
        rates = {i: t.rate(clips) for i, t in zip(timed, timings)}
    base = next((r["macs"] for r in rows if r["stage"] == "finetune"), None)
    for i, row in enumerate(rows):
        if i in rates:
            row["clips_per_s"] = rates[i]
        if base and "macs" in row:
            row["mac_ratio"] = base / row["macs"]
    return {"rows": rows, "load": (load_start, os.getloadavg()[0]), "rounds": rounds,
            "batch": clips}


def markdown(results: dict[str, Any], *, command: str) -> str:
    """results.md: the table, how clips/s was measured and under which load."""
    lines = [f"Command: `{command}`", "",
             "| stage | what | eval | MACs / clip | fewer MACs | clips/s | step | checkpoint |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        metric = (f"accuracy {r['accuracy']:.4f}" if "accuracy" in r
                  else f"loss {r['loss']:.4f}")
        macs = f"{r['macs']:.3g}" if "macs" in r else "-"
        ratio = f"{r['mac_ratio']:.2f}x" if "mac_ratio" in r else "-"
        rate = f"{r['clips_per_s']:.0f}" if "clips_per_s" in r else "-"
        lines.append(f"| {r['stage']} | {r['what']} | {metric} | {macs} | {ratio} | {rate} | "
                     f"{r['step']} | {r['checkpoint']} |")
    start, end = results["load"]
    busy = (f" Above {bench.MAX_LOAD} other processes share the cores: compare the rates "
            "with each other, not with another machine's." if max(start, end) > bench.MAX_LOAD
            else "")
    lines += ["", f"clips/s: each classifier's jitted forward on one {results['batch']}-clip "
              f"eval batch, compiled first, median of {results['rounds']} rounds interleaving "
              f"the models. 1-minute load average {start:.2f} at start, {end:.2f} at end."
              f"{busy} MACs: analytic forward multiply-accumulates per clip "
              "(fast_ast_jax.bench.ast_macs)."]
    if results.get("wall_s"):
        lines += ["", "Training wall time (every run of this workdir, under the machine's "
                  "load at the time): " + ", ".join(
                      f"{k} {v / 60:.1f} min" for k, v in results["wall_s"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_results(workdir: Path, results: dict[str, Any], *, command: str) -> str:
    """W/results.md and W/results.json; returns the markdown."""
    text = markdown(results, command=command)
    (workdir / "results.md").write_text(text)
    (workdir / "results.json").write_text(json.dumps(
        {**results, "command": command}, indent=1))
    return text
