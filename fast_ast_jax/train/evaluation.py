"""Evaluate a checkpoint: accuracy / mAP, with ToMe / TopK overrides and sweeps."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections

from fast_ast_jax import sharding
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.models import AST, model_from_fields
from fast_ast_jax.train.checkpoint import Checkpointer, model_fields_from_meta

# Short names accepted by --sweep / overrides -> AST fields.
FIELD_ALIASES = {"r": "tome_r", "tome_r": "tome_r", "keep_rate": "prune_keep_rate",
                 "prune_keep_rate": "prune_keep_rate"}


@dataclasses.dataclass
class Restored:
    """What a checkpoint holds for inference."""

    params: Any
    model: Any  # AST or CNNTeacher (checkpoint meta "model_class")
    frontend: FrontEnd
    labels: list[str]
    loss: str
    config: ml_collections.ConfigDict
    step: int


def checkpoint_dir(path: str | Path) -> Path:
    """A workdir (holding checkpoints/) or the checkpoints directory itself."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether `path` is a training workdir or checkpoints dir (numeric step dirs)."""
    path = checkpoint_dir(path)
    return path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def load_checkpoint(path: str | Path, *, step: int | None = None) -> Restored:
    """Params (as saved, on the host), model, front-end and labels of a checkpoint.

    Without `step`, the latest readable step (an unreadable newer one is skipped with a
    warning naming it). Raises FileNotFoundError (no checkpoint) or CheckpointError.
    """
    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a training workdir "
                                "or its checkpoints/ directory")
    ckpt = Checkpointer(directory, create=False)
    try:
        state, meta = ckpt.restore(step, fallback=True)
        step = ckpt.restored_step
    finally:
        ckpt.close()
    fields = model_fields_from_meta(meta)
    model = model_from_fields(meta.get("model_class", "ast"), fields)
    return Restored(params=state["params"], model=model,
                    frontend=FrontEnd.from_dict(meta["frontend"]), labels=list(meta["labels"]),
                    loss=meta["loss"], config=ml_collections.ConfigDict(meta["config"]),
                    step=int(step))


def parse_sweep(spec: str) -> list[dict[str, Any]]:
    """"r=0,8,16" -> [{"tome_r": 0}, {"tome_r": 8}, {"tome_r": 16}] (floats allowed)."""
    name, _, values = spec.partition("=")
    field = FIELD_ALIASES.get(name.strip())
    if field is None or not values:
        raise ValueError(f"--sweep {spec!r}: use NAME=v1,v2,... with NAME in "
                         f"{sorted(FIELD_ALIASES)}")
    cast = float if field == "prune_keep_rate" else int
    return [{field: cast(v)} for v in values.split(",") if v.strip()]


def _macs(model, frames: int) -> float | None:
    """Forward MACs per clip of an AST, counted from its token plan (fast_ast_jax.bench);
    None for other models (see _xla_flops)."""
    if not isinstance(model, AST):
        return None
    from fast_ast_jax.bench import ast_macs

    return float(ast_macs(model, frames=frames).total)


def _xla_flops(model, params, *, frames: int, bins: int) -> float:
    """Forward flops per clip that XLA's cost analysis reports (batch of one), for models
    without an analytic MAC count (the CNN teacher)."""
    import jax.numpy as jnp

    from fast_ast_jax.bench import xla_flops

    x = jnp.zeros((1, frames, bins), jnp.float32)
    return xla_flops(lambda p, x: model.apply({"params": p}, x, train=False), params, x)


def evaluate_checkpoint(path: str | Path, *, config: ml_collections.ConfigDict | None = None,
                        split: str = "eval", settings: Sequence[dict] = ({},),
                        plot: str | Path | None = None, echo=print,
                        hop_frames: int | None = None) -> list[dict[str, Any]]:
    """Evaluate a checkpoint under each model setting (e.g. {"tome_r": 8}).

    Args:
        path: workdir or checkpoints directory.
        config: data config to evaluate on (default: the checkpoint's own).
        split: "eval" or "train" (config.data.<split>).
        settings: AST field overrides, one evaluation each (the first is the baseline of
            the speedup column).
        plot: write a PNG of accuracy (or mAP) against clips/s there.
        hop_frames: score whole clips by sliding windows of target_frames every hop_frames
            frames (fast_ast_jax.windows) instead of cropping them to target_frames.
    Returns:
        one row per setting: the overrides, accuracy (mAP), clips_per_s, speedup, and
        macs (AST: analytic count from fast_ast_jax.bench) or xla_flops (other models:
        XLA's cost analysis of the forward pass, flops not MACs).
    """
    from fast_ast_jax.train.forward import evaluate
    from fast_ast_jax.train.task import build_pipeline

    restored = load_checkpoint(path)
    config = config or restored.config
    if hop_frames is not None:
        return _evaluate_windows(restored, config, split=split, settings=settings,
                                 hop_frames=hop_frames, echo=echo)
    pipeline = build_pipeline(config, split, frontend=restored.frontend, train=False)
    if pipeline is None:
        raise ValueError(f"config.data.{split} is empty: nothing to evaluate on")
    if list(pipeline.source.labels) != restored.labels:
        raise ValueError(f"the {split} data labels {list(pipeline.source.labels)} differ from "
                         f"the checkpoint's {restored.labels}")
    if not isinstance(restored.model, AST) and any(settings):
        raise ValueError(f"token-reduction settings {list(settings)} apply to an AST only; "
                         f"{path} holds a {type(restored.model).__name__}")
    mesh = sharding.make_mesh()
    params = jax.device_put(restored.params, sharding.param_shardings(restored.params, mesh))
    rows = []
    for setting in settings:
        model = restored.model.clone(**setting)
        result = evaluate(params, model=model, pipeline=pipeline, mesh=mesh,
                          multi_label=restored.loss == "sigmoid",
                          desc=" ".join(f"{k}={v}" for k, v in setting.items()) or "eval")
        row = {**setting, **result}
        macs = _macs(model, restored.frontend.target_frames)
        if macs is not None:
            row["macs"] = macs
        else:  # labelled differently: XLA's count, not the analytic MACs
            row["xla_flops"] = _xla_flops(model, params, frames=restored.frontend.target_frames,
                                          bins=restored.frontend.num_mel_bins)
        row["speedup"] = row["clips_per_s"] / (rows[0]["clips_per_s"] if rows
                                               else row["clips_per_s"])
        rows.append(row)
    if echo:
        echo(format_table(rows))
    if plot:
        plot_sweep(rows, plot)
    return rows


def _evaluate_windows(restored: Restored, config, *, split: str, settings: Sequence[dict],
                      hop_frames: int, echo) -> list[dict[str, Any]]:
    """evaluate_checkpoint over whole clips scored by sliding windows (bad clips skipped
    and counted, or fatal, as config.data.on_bad_clip says). clips_per_s here includes
    decoding and features (windows are featurised on the fly), unlike the cropped path."""
    import time

    import numpy as np

    from fast_ast_jax.audio.io import AudioError
    from fast_ast_jax.data import make_source
    from fast_ast_jax.train import metrics as metrics_lib
    from fast_ast_jax.windows import windowed_scores

    kwargs = config.data[split].to_dict()
    if not kwargs:
        raise ValueError(f"config.data.{split} is empty: nothing to evaluate on")
    source = make_source(config.data.source, sample_rate=restored.frontend.sample_rate,
                         **kwargs)
    if list(source.labels) != restored.labels:
        raise ValueError(f"the {split} data labels {list(source.labels)} differ from "
                         f"the checkpoint's {restored.labels}")
    multi = restored.loss == "sigmoid"
    batch = config.get("eval_batch_size") or 2 * config.batch_size
    rows = []
    for setting in settings:
        model = restored.model.clone(**setting)
        forward = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, train=False))
        targets, bad = [], []

        def waves():
            for i in range(len(source)):
                try:
                    ex = source[i]
                except AudioError as e:
                    if config.data.get("on_bad_clip", "skip") == "fail":
                        raise
                    bad.append(str(e))
                    continue
                label = ex["label"]
                y = np.zeros(len(source.labels), np.float32)
                if np.ndim(label) == 0:
                    y[int(label)] = 1.0
                else:
                    y = np.asarray(label, np.float32)
                targets.append(y)
                yield ex["audio"]

        start = time.perf_counter()
        scores = np.stack([c.scores for c in windowed_scores(
            waves(), apply=lambda x: forward(restored.params, x), frontend=restored.frontend,
            multi_label=multi, hop_frames=hop_frames, batch_size=batch)])
        seconds = time.perf_counter() - start
        y = np.stack(targets)
        row = {**setting, "accuracy": metrics_lib.accuracy(logits=scores, targets=y),
               "clips_per_s": len(y) / seconds, "num_clips": float(len(y)),
               "bad_clips": float(len(bad))}
        if multi:
            row["mAP"] = metrics_lib.mean_average_precision(logits=scores, targets=y)
        row["speedup"] = row["clips_per_s"] / (rows[0]["clips_per_s"] if rows
                                               else row["clips_per_s"])
        rows.append(row)
    if echo:
        echo(format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "num_clips"))
    lines = [" | ".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append(" | ".join(
            f"{r[k]:>12.4g}" if isinstance(r.get(k), float) else f"{str(r.get(k, '')):>12}"
            for k in keys))
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Accuracy (mAP if present) against clips/s, one labelled point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "mAP" if "mAP" in rows[0] else "accuracy"
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [r["clips_per_s"] for r in rows], [r[metric] for r in rows]
    ax.plot(xs, ys, "o-")
    fields = dict.fromkeys(FIELD_ALIASES.values())  # several aliases name one field
    for n, (r, x, y) in enumerate(zip(rows, xs, ys)):
        name = ", ".join(f"{k}={r[k]}" for k in fields if k in r) or "base"
        # Alternate above/below: neighbouring settings often share an accuracy.
        ax.annotate(name, (x, y), textcoords="offset points",
                    xytext=(4, 6 if n % 2 == 0 else -12), fontsize=8)
    ax.set_xlabel("throughput (clips/s)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
