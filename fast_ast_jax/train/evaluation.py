"""Evaluate a checkpoint of any kind: accuracy / mAP, with ToMe / TopK overrides and sweeps.

Padded models (AST, CNN teacher) are evaluated on the cropped training input (model-only
clips/s) or, with `hop_frames`, on whole clips by sliding windows; an ElasticAST prints its
(eval_hops_ms x eval_max_frames) table per setting, or is scored on whole clips at their own
length (windows only past its row) with `hop_frames`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from fast_ast_jax import bench, checkpoints, maps, models, sharding
from fast_ast_jax.audio.io import AudioError
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.data.clips import target
from fast_ast_jax.models import AST
from fast_ast_jax.models.ast import Encoder
from fast_ast_jax.train import metrics as metrics_lib
from fast_ast_jax.train.elastic import evaluate_table
from fast_ast_jax.train.forward import evaluate, time_forwards
from fast_ast_jax.train.spec import Run, checkpoint_run
from fast_ast_jax.train.task import build_pipeline, pack_spec, packed_evals, split_source
from fast_ast_jax.train.table import format_table
from fast_ast_jax.windows import ordered_map, scorer, windowed_scores


# Short names accepted by --sweep / overrides -> model fields.
FIELD_ALIASES = {"r": "tome_r", "tome_r": "tome_r", "keep_rate": "prune_keep_rate",
                 "prune_keep_rate": "prune_keep_rate"}


def parse_sweep(spec: str) -> list[dict[str, Any]]:
    """"r=0,8,16" -> [{"tome_r": 0}, {"tome_r": 8}, {"tome_r": 16}] (floats allowed)."""
    name, _, values = spec.partition("=")
    field = FIELD_ALIASES.get(name.strip())
    if field is None or not values:
        raise ValueError(f"--sweep {spec!r}: use NAME=v1,v2,... with NAME in "
                         f"{sorted(FIELD_ALIASES)}")
    cast = float if field == "prune_keep_rate" else int
    return [{field: cast(v)} for v in values.split(",") if v.strip()]


def _cost(model, params, frontend) -> dict[str, float]:
    """{"macs": analytic forward MACs per clip} for an AST (fast_ast_jax.bench), else
    {"xla_flops": XLA's cost analysis of the forward, batch of one} (flops, not MACs)."""
    if isinstance(model, AST):
        return {"macs": float(bench.ast_macs(model, frames=frontend.target_frames).total)}
    x = jax.numpy.zeros((1, frontend.target_frames, frontend.num_mel_bins), jax.numpy.float32)
    return {"xla_flops": bench.xla_flops(
        lambda p, x: model.apply({"params": p}, x, train=False), params, x)}


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds "mac_ratio" (the first row's MACs over the row's, where counted: the speedup the
    MACs promise) and "speedup" (measured: clips/s over the first row's)."""
    base = rows[0]
    return [{**r, **({"mac_ratio": base["macs"] / r["macs"]} if "macs" in r else {}),
             "speedup": r["clips_per_s"] / base["clips_per_s"]} for r in rows]


def _setting(row: dict[str, Any]) -> str:
    """"tome_r=8, prune_keep_rate=0.5" (or "base"): the overrides a row was evaluated with."""
    fields = dict.fromkeys(FIELD_ALIASES.values())  # several aliases name one field
    return ", ".join(f"{k}={row[k]}" for k in fields if k in row) or "base"


# How a path measured clips/s (a sentence) and how much its timing rounds varied (relative
# interquartile range; None: one pass, not known).
Timed = tuple[str, "float | None"]


def _footer(rows: list[dict[str, Any]], *, timed: Timed, loads: tuple[float, float]) -> str:
    """What clips/s measured and under which load, and why a setting that needs fewer MACs
    than the first row ran slower: timing noise (within the rounds' spread) or a model too
    small for MACs to set its speed."""
    how, noise = timed
    busy = (f"; above {bench.MAX_LOAD}, other processes share the cores and the timings "
            "are not the machine's" if max(loads) > bench.MAX_LOAD else "")
    lines = [f"clips/s: {how}. 1-minute load average {loads[0]:.2f} at start, "
             f"{loads[1]:.2f} at end{busy}."]
    for r in rows:
        if r.get("mac_ratio", 1.0) <= 1.0 or r["speedup"] >= 1.0:
            continue
        head = (f"note: {_setting(r)} needs {r['mac_ratio']:.2f}x fewer MACs but measured "
                f"{r['speedup']:.2f}x")
        if noise is None or 1.0 - r["speedup"] <= noise:
            lines.append(f"{head}: within this run's timing noise, not a slowdown; time it "
                         "on an idle machine or read mac_ratio.")
        else:
            lines.append(f"{head}, beyond this run's timing noise: at this model size "
                         "per-call and per-token overheads (dispatch, the merge's sorts "
                         "and gathers), not MACs, set the speed, so speedup does not "
                         "measure the saving here; mac_ratio does.")
    return "\n".join(lines)


def evaluate_checkpoint(path: str | Path, *, config: ml_collections.ConfigDict | None = None,
                        split: str = "eval", settings: Sequence[dict] = ({},),
                        plot: str | Path | None = None, echo=print,
                        hop_frames: int | None = None,
                        workers: int | None = None) -> list[dict[str, Any]]:
    """Evaluate a checkpoint (any kind) under each model setting (e.g. {"tome_r": 8}).

    Args:
        path: workdir or checkpoints directory.
        config: data config to evaluate on (default: the checkpoint's own).
        split: "eval" or "train" (config.data.<split>).
        settings: model field overrides, one evaluation each (the first is the baseline of
            the speedup column).
        plot: write a PNG of accuracy (or mAP) against clips/s there.
        hop_frames: score whole clips by sliding windows every hop_frames frames
            (fast_ast_jax.windows) instead of the cropped input / the packed table.
        workers: loader worker processes (config.data.worker_count; None: the config's,
            i.e. the training run's unless `config` is given); with hop_frames, decoding
            threads (None: 2).
    Returns:
        one row per setting (ElasticAST: per setting, hop and length cap): the overrides,
        accuracy (mAP), clips_per_s, speedup; padded models add macs (AST: analytic count,
        and mac_ratio: the first row's over the row's) or xla_flops (other models: XLA's
        cost analysis, flops not MACs). `echo` gets the table and, under it, how clips/s
        was measured and the 1-minute load average at the start and the end.
    """
    bundle = checkpoints.load_classifier(path)
    run = checkpoint_run(bundle, config, workers=workers)
    if not isinstance(bundle.model, Encoder) and any(settings):
        raise ValueError(f"token-reduction settings {list(settings)} apply to an AST or "
                         f"ElasticAST only; {path} holds a {type(bundle.model).__name__}")
    load_start = os.getloadavg()[0]
    if hop_frames is not None:
        rows, timed = _evaluate_windows(bundle, run, split=split, settings=settings,
                                        hop_frames=hop_frames,
                                        threads=2 if workers is None else workers)
    elif models.is_packed(bundle.model):
        rows, timed = _evaluate_packed(bundle, run, split=split, settings=settings)
    else:
        rows, timed = _evaluate_padded(bundle, run, split=split, settings=settings)
    rows = _with_ratios(rows)
    if echo:
        echo(format_table(rows))
        echo(_footer(rows, timed=timed, loads=(load_start, os.getloadavg()[0])))
    if plot:
        plot_sweep(rows, plot)
    return rows


def write_split_maps(path: str | Path, *, directory: str | Path, num_maps: int,
                     config: ml_collections.ConfigDict | None = None, split: str = "eval",
                     **overrides) -> list[Path]:
    """Token-reduction maps (fast_ast_jax.maps) of the first `num_maps` clips of a split,
    named <index>_<clip id>_merge.png / _kept.png, for the checkpoint's settings or the
    model field `overrides` (tome_r=8, prune_keep_rate=0.5, ...)."""
    bundle = checkpoints.load_classifier(path)
    source = _source(bundle, checkpoint_run(bundle, config), split)
    paths = []
    for i in range(min(num_maps, len(source))):
        ex = source[i]
        name = f"{i}_{Path(str(ex.get('id', i))).stem}"
        paths += maps.write_maps(bundle, ex["audio"], directory=directory, name=name,
                                 **overrides)
    return paths


def _source(bundle: Bundle, run: Run, split: str):
    """The split's source, with the checkpoint's labels."""
    source = split_source(run, split)
    if tuple(source.labels) != bundle.labels:
        raise ValueError(f"the {split} data labels {list(source.labels)} differ from "
                         f"the checkpoint's {list(bundle.labels)}")
    return source


def _evaluate_padded(bundle: Bundle, run: Run, *, split: str, settings: Sequence[dict]
                     ) -> tuple[list[dict[str, Any]], Timed]:
    """Cropped training input: accuracy over a pass per setting, then clips/s of the
    jitted model alone, the settings timed against each other (`time_forwards`)."""
    pipeline = build_pipeline(run, split, train=False, source=_source(bundle, run, split))
    mesh = sharding.make_mesh()
    params = jax.device_put(bundle.params, sharding.param_shardings(bundle.params, mesh))
    rows, models = [], [bundle.model.clone(**setting) for setting in settings]
    for setting, model in zip(settings, models):
        result = evaluate(params, model=model, pipeline=pipeline, mesh=mesh,
                          multi_label=bundle.multi_label,
                          desc=" ".join(f"{k}={v}" for k, v in setting.items()) or "eval")
        rows.append({**setting, **result, **_cost(model, params, bundle.frontend)})
    timings, clips = time_forwards([(model, params) for model in models], pipeline=pipeline,
                                   mesh=mesh, rounds=bench.TIMING_ROUNDS)
    for row, timing in zip(rows, timings):
        row["clips_per_s"] = timing.rate(clips)
    noise = max(t.spread for t in timings)
    return rows, (f"the jitted forward alone on one {clips}-clip eval batch, compiled first, "
                  f"median of {bench.TIMING_ROUNDS} rounds interleaving the settings (rounds vary "
                  f"by {noise:.0%}: interquartile range / median)", noise)


def _evaluate_packed(bundle: Bundle, run: Run, *, split: str, settings: Sequence[dict]
                     ) -> tuple[list[dict[str, Any]], Timed]:
    """The ElasticAST (eval_hops_ms x eval_max_frames) table, as training evaluates it
    (task.packed_evals), one compiled program per setting; clips/s of the jitted model
    alone, as for padded models."""
    if run.elastic is None:
        raise ValueError("the checkpoint holds a packed model (ElasticAST), whose "
                         "evaluation table comes from a config.elastic block: give a "
                         "config with one (or the checkpoint's own)")
    pipelines = [(key, pipeline) for _, key, pipeline in packed_evals(
        run, split, source=_source(bundle, run, split),
        spec=pack_spec(run.elastic, bundle.model))]
    mesh = sharding.make_mesh()
    rows = []
    for setting in settings:
        rows += [{**setting, **row} for row in evaluate_table(
            bundle.params, model=bundle.model.clone(**setting), pipelines=pipelines,
            mesh=mesh, multi_label=bundle.multi_label)]
    return rows, ("the jitted forward alone over one pass per row, compilation excluded",
                  None)


def _evaluate_windows(bundle: Bundle, run: Run, *, split: str, settings: Sequence[dict],
                      hop_frames: int, threads: int) -> tuple[list[dict[str, Any]], Timed]:
    """Whole clips scored by sliding windows (bad clips skipped and counted, or fatal, as
    config.data.on_bad_clip says); clips are decoded by `threads` threads, the features
    made as `windows.scorer` says (on an accelerator: on the device). clips_per_s here
    includes decoding and features, unlike the cropped path."""
    source = _source(bundle, run, split)
    batch = run.eval_batch_size or 2 * run.batch_size
    rows = []
    for setting in settings:
        targets, bad = [], []

        def waves():
            for _, ex, error in ordered_map(source.__getitem__, range(len(source)),
                                            workers=threads):
                if error is not None:
                    if not isinstance(error, AudioError) or run.data.on_bad_clip == "fail":
                        raise error
                    bad.append(str(error))
                    continue
                targets.append(target(ex["label"], num_classes=len(source.labels)))
                yield ex["audio"]

        start = time.perf_counter()
        scores = np.stack([c.scores for c in windowed_scores(
            waves(), scorer=scorer(bundle, batch_size=batch, **setting),
            hop_frames=hop_frames, workers=threads)])
        seconds = time.perf_counter() - start
        y = np.stack(targets)
        row = {**setting, "accuracy": metrics_lib.accuracy(logits=scores, targets=y),
               "clips_per_s": len(y) / seconds, "num_clips": float(len(y)),
               "bad_clips": float(len(bad))}
        if bundle.multi_label:
            row["mAP"] = metrics_lib.mean_average_precision(logits=scores, targets=y)
        rows.append(row)
    return rows, ("whole clips over one pass, decoding and features included", None)


def plot_sweep(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Accuracy (mAP if present) against clips/s, one labelled point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "mAP" if "mAP" in rows[0] else "accuracy"
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [r["clips_per_s"] for r in rows], [r[metric] for r in rows]
    ax.plot(xs, ys, "o-")
    for n, (r, x, y) in enumerate(zip(rows, xs, ys)):
        name = _setting(r)
        # Alternate above/below: neighbouring settings often share an accuracy.
        ax.annotate(name, (x, y), textcoords="offset points",
                    xytext=(4, 6 if n % 2 == 0 else -12), fontsize=8)
    ax.set_xlabel("throughput (clips/s)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
