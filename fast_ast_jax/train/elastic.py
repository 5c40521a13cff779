"""ElasticAST training and evaluation: packed native-length, variable-hop batches.

`train_elastic(config, workdir)` is the packed counterpart of `loop.train_and_evaluate`
(same config layout plus `config.elastic`, same TrainState, optimiser and checkpoints): each
step is one packed batch of fixed shape (data.packed), so one compiled train program and one
compiled eval program serve every clip length and hop. `elastic_sweep` evaluates one model
at several hops and length caps (ElasticAST's resolution / length tables).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import make_source
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.data.pipeline import Augment
from fast_ast_jax.models.ast import AST, SIZES, model_fields
from fast_ast_jax.models.elastic import ElasticAST, check_positions, params_from_ast
from fast_ast_jax.train import metrics as metrics_lib
from fast_ast_jax.train.checkpoint import Checkpointer, model_fields_from_meta
from fast_ast_jax.train.evaluation import checkpoint_dir, format_table
from fast_ast_jax.train.loop import resume, run_steps
from fast_ast_jax.train.state import TrainState, learning_rate_schedule, make_optimizer
from fast_ast_jax.train.step import loss_fn_for, update_if_finite
from fast_ast_jax.train.validate import validate_config

MODEL_KIND = "elastic"  # checkpoint meta["model_kind"] of train_elastic runs

# config.model fields that ElasticAST shares with AST.
_SHARED = ("width", "depth", "num_heads", "mlp_dim", "fstride", "tstride", "dist_token",
           "dropout", "dtype", "tome_r", "tome_prop_attn", "prune_keep_rate", "prune_layers")


def elastic_defaults() -> ml_collections.ConfigDict:
    """The `config.elastic` block (added to a default_config() by elastic recipes)."""
    return ml_collections.ConfigDict(dict(
        rows=4,  # packed rows per step
        max_tokens=256,  # token budget per row (ElasticAST 2048)
        max_slots=16,  # clips per row at most
        hops_ms=(10.0,),  # training hops drawn per clip (ElasticAST 10..40 ms)
        max_frames=1024,  # length cap at each clip's hop (ElasticAST audio_length)
        token_dropout=0.0,  # ElasticAST 0.1 in training
        pos_embedding="factorised",  # or "ast"
        pool="attn",  # or "mean"
        eval_hops_ms=(10.0,),  # evaluation table: hops ...
        eval_max_frames=(1024,),  # ... times length caps
    ))


def build_elastic_model(config, *, num_classes: int, frontend: FrontEnd) -> ElasticAST:
    """ElasticAST sized by config.model; its time table covers config.elastic.max_frames."""
    m, e = config.model, config.elastic
    if m.size not in SIZES:
        raise ValueError(f"config.model.size={m.size!r}; choose one of {sorted(SIZES)}")
    fields = {**SIZES[m.size], **{k: m[k] for k in _SHARED if k in m and m[k] is not None}}
    if m.get("prune_fuse"):
        raise ValueError("config.model.prune_fuse is not supported by the packed model "
                         "(a fused token per sample has no static place in a row)")
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return ElasticAST(num_classes=num_classes, num_mel_bins=frontend.num_mel_bins,
                      frames=max(int(e.max_frames), max(int(f) for f in e.eval_max_frames)),
                      pos_embedding=e.pos_embedding, pool=e.pool, **fields)


def pack_spec(config, model: ElasticAST) -> PackSpec:
    e = config.elastic
    return PackSpec(rows=e.rows, max_tokens=e.max_tokens, max_slots=e.max_slots,
                    patch_size=model.patch_size, fstride=model.fstride, tstride=model.tstride)


def packed_train_step(state: TrainState, batch: dict, *, model: ElasticAST,
                      tx: optax.GradientTransformation, loss: str,
                      lr_fn: optax.Schedule) -> tuple[TrainState, dict]:
    """One optimiser step on a packed batch (y (R, S, C), mask (R, S) per slot); metrics and
    the non-finite guard as `step.train_step` ("clips": real clips in the batch)."""
    rng, lr = jax.random.fold_in(state.rng, state.step), lr_fn(state.step)
    xent = loss_fn_for(loss)
    num_classes = batch["y"].shape[-1]
    y, mask = batch["y"].reshape(-1, num_classes), batch["mask"].reshape(-1)

    def objective(params):
        logits, _ = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        logits = logits.reshape(-1, num_classes)
        return xent(logits=logits, labels=y, weights=mask), logits

    (value, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    state, guard = update_if_finite(state, grads=grads, value=value, tx=tx)
    correct = jnp.argmax(logits, -1) == jnp.argmax(y, -1)
    return state, {"loss": value, "accuracy": (correct * mask).sum() / jnp.maximum(mask.sum(), 1),
                   "lr": lr, "clips": mask.sum(), **guard}


def packed_eval_step(params, batch: dict, *, model: ElasticAST) -> jax.Array:
    """Packed batch -> per-slot logits (R, S, C) float32."""
    return model.apply({"params": params}, batch, train=False)[0]


def evaluate_packed(params, *, model: ElasticAST, pipeline: PackedPipeline,
                    eval_fn=None, multi_label: bool = False) -> dict[str, float]:
    """Accuracy (and mAP) over one pass; `eval_fn` is a jitted `packed_eval_step` to reuse
    (so that every pipeline of one PackSpec runs the same compiled program)."""
    eval_fn = eval_fn or jax.jit(functools.partial(packed_eval_step, model=model))
    logits, targets = [], []
    for batch, _ in pipeline.iterate():
        check_positions(model, batch["positions"])
        out = np.asarray(eval_fn(params, {k: batch[k] for k in
                                          ("patches", "segment_ids", "positions",
                                           "slot_index")}))
        valid = batch["mask"] > 0
        logits.append(out[valid])
        targets.append(batch["y"][valid])
    logits, targets = np.concatenate(logits), np.concatenate(targets)
    result = {"accuracy": metrics_lib.accuracy(logits=logits, targets=targets),
              "num_clips": float(len(logits)), "bad_clips": float(len(pipeline.bad_clips))}
    if multi_label:
        result["mAP"] = metrics_lib.mean_average_precision(logits=logits, targets=targets)
    return result


def elastic_sweep(params, *, model: ElasticAST, source, frontend: FrontEnd, spec: PackSpec,
                  hops_ms: Sequence[float], max_frames: Sequence[int],
                  multi_label: bool = False, eval_fn=None,
                  on_bad_clip: str = "skip") -> list[dict[str, Any]]:
    """Evaluate at every (hop, length cap): one row each, all through one compiled program.

    Returns rows {"hop_ms", "max_frames", "accuracy" (, "mAP"), "num_clips", "bad_clips"}.
    """
    eval_fn = eval_fn or jax.jit(functools.partial(packed_eval_step, model=model))
    rows = []
    for hop in hops_ms:
        for frames in max_frames:
            pipeline = PackedPipeline(source, frontend=frontend, spec=spec, train=False,
                                      hops_ms=(hop,), max_frames=int(frames),
                                      on_bad_clip=on_bad_clip)
            result = evaluate_packed(params, model=model, pipeline=pipeline, eval_fn=eval_fn,
                                     multi_label=multi_label)
            rows.append({"hop_ms": float(hop), "max_frames": int(frames), **result})
    return rows


def init_from_ast(path: str, model: ElasticAST, *, init, seed: int = 0):
    """ElasticAST params from an AST checkpoint (HF dir, AST .pth, timm DeiT; see
    fast_ast_jax.convert) of the same size and patch grid, via `params_from_ast`."""
    from fast_ast_jax import convert

    ast = AST(num_classes=model.num_classes, width=model.width, depth=model.depth,
              num_heads=model.num_heads, mlp_dim=model.mlp_dim, patch_size=model.patch_size,
              fstride=model.fstride, tstride=model.tstride, num_mel_bins=model.num_mel_bins,
              frames=model.frames, dist_token=model.dist_token)
    ast_params = convert.load_into(ast, path, seed=seed)
    return params_from_ast(model, ast_params, ast_grid=ast.grid(), num_prefix=ast.num_prefix,
                           init=init)


def _pipeline(config, split: str, *, frontend: FrontEnd, spec: PackSpec, train: bool):
    kwargs = config.data[split].to_dict()
    if not kwargs:
        return None
    source = make_source(config.data.source, sample_rate=frontend.sample_rate, **kwargs)
    e = config.elastic
    return PackedPipeline(source, frontend=frontend, spec=spec, train=train,
                          hops_ms=tuple(e.hops_ms), max_frames=int(e.max_frames),
                          token_dropout=float(e.token_dropout) if train else 0.0,
                          seed=config.seed, cache=config.data.cache,
                          augment=Augment(**config.augment) if train else Augment(),
                          on_bad_clip=config.data.on_bad_clip)


def train_elastic(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ElasticAST on packed batches (resuming from workdir), then evaluate the
    (eval_hops_ms x eval_max_frames) table on config.data.eval.

    The loop, its logs and its failure handling (bad clips, non-finite steps, preemption,
    unreadable checkpoints) are those of the padded run (`loop.run_steps`); periodic
    evaluations (config.eval_every) use the table's first hop and length cap.

    Returns {"step", "train_loss", "eval_table" (rows), "state", "train_compilations"
    (how often the train step was traced: 1 for any mix of lengths and hops)}.
    """
    if jax.process_count() > 1:
        raise ValueError("packed (ElasticAST) training runs on one host: the packing of a "
                         "step is not split across hosts; drop config.elastic for multi-host")
    validate_config(config, device_count=jax.device_count())
    workdir = Path(workdir)
    frontend = FrontEnd.from_dict(config.frontend.to_dict())
    if frontend.on_device:
        raise ValueError("config.frontend.on_device=True is not supported by packed "
                         "(ElasticAST) training yet: packs are built from host features; "
                         "set config.frontend.on_device=False")
    probe = make_source(config.data.source, sample_rate=frontend.sample_rate,
                        **config.data.train.to_dict())
    labels = list(probe.labels)
    model = build_elastic_model(config, num_classes=len(labels), frontend=frontend)
    spec = pack_spec(config, model)
    train_data = _pipeline(config, "train", frontend=frontend, spec=spec, train=True)
    loss = config.loss or ("sigmoid" if probe.multi_label else "softmax")
    steps_per_epoch = train_data.steps(0)
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    lr_fn = learning_rate_schedule(config.optim, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch)
    tx = make_optimizer(config.optim, lr_fn)

    def init(key):
        init_key, train_key = jax.random.split(key)
        dummy = {"patches": jnp.zeros((1, 8, spec.patch_size ** 2)),
                 "segment_ids": jnp.ones((1, 8), jnp.int32),
                 "positions": jnp.zeros((1, 8, 2), jnp.int32),
                 "slot_index": jnp.zeros((1, 1), jnp.int32)}
        params = model.init({"params": init_key}, dummy)["params"]
        return TrainState(params=params, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=train_key)

    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint_every,
                        keep=config.keep_checkpoints)
    meta = {"model": model_fields(model), "model_kind": MODEL_KIND,
            "frontend": frontend.to_dict(), "labels": labels, "loss": loss,
            "config": json.loads(config.to_json_best_effort())}
    position = (0, 0)
    state = jax.jit(init)(jax.random.PRNGKey(config.seed))
    if ckpt.latest_step() is not None:
        state, position = resume(ckpt, target=state, meta=meta)
    elif config.init_from:
        params = init_from_ast(config.init_from, model, init=state.params, seed=config.seed)
        state = state.replace(params=params, opt_state=tx.init(params))
    traces = []

    def counted_step(state, batch):
        traces.append(1)  # Python runs once per trace, i.e. per compilation
        return packed_train_step(state, batch, model=model, tx=tx, loss=loss, lr_fn=lr_fn)

    jitted = jax.jit(counted_step, donate_argnums=0)

    def step_fn(state, batch):
        check_positions(model, batch["positions"])
        return jitted(state, batch)

    e = config.elastic
    eval_source = None
    if config.data.eval.to_dict():
        eval_source = make_source(config.data.source, sample_rate=frontend.sample_rate,
                                  **config.data.eval.to_dict())
    eval_fn = jax.jit(functools.partial(packed_eval_step, model=model))
    evaluate_fn = None
    if eval_source is not None and config.eval_every:
        periodic = PackedPipeline(eval_source, frontend=frontend, spec=spec, train=False,
                                  hops_ms=(e.eval_hops_ms[0],),
                                  max_frames=int(e.eval_max_frames[0]),
                                  cache=config.data.cache, on_bad_clip=config.data.on_bad_clip)

        def evaluate_fn(state):
            return evaluate_packed(state.params, model=model, pipeline=periodic,
                                   eval_fn=eval_fn, multi_label=probe.multi_label)

    writer = metrics_lib.MetricWriter(workdir)
    try:
        state, final = run_steps(
            state, step_fn=step_fn,
            batches=train_data.iterate(epoch=position[0], index=position[1]),
            position=position, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            config=config, ckpt=ckpt, meta=meta, writer=writer,
            bad_clips=lambda: len(train_data.bad_clips), evaluate_fn=evaluate_fn)
    finally:
        ckpt.close()
    try:
        if eval_source is not None:
            table = elastic_sweep(state.params, model=model, source=eval_source,
                                  frontend=frontend, spec=spec, hops_ms=e.eval_hops_ms,
                                  max_frames=e.eval_max_frames, multi_label=probe.multi_label,
                                  eval_fn=eval_fn, on_bad_clip=config.data.on_bad_clip)
            for row in table:
                writer.write(final["step"], {
                    f"eval/hop{row['hop_ms']:g}_len{row['max_frames']}/{k}": v
                    for k, v in row.items() if k not in ("hop_ms", "max_frames")})
            final["eval_table"] = table
            print(format_table(table))
    finally:
        writer.close()
    return {**final, "state": state, "train_compilations": len(traces)}


def is_elastic_checkpoint(path: str | Path) -> bool:
    """Whether the latest checkpoint under `path` was written by `train_elastic`."""
    ckpt = Checkpointer(checkpoint_dir(path))
    try:
        _, meta = ckpt.restore()
    finally:
        ckpt.close()
    return meta.get("model_kind") == MODEL_KIND


def load_elastic_checkpoint(path: str | Path) -> tuple[Any, ElasticAST, dict]:
    """(params, model, meta) of a `train_elastic` checkpoint (latest step).

    Raises:
        ValueError: if the checkpoint is not an ElasticAST one.
    """
    ckpt = Checkpointer(checkpoint_dir(path))
    try:
        state, meta = ckpt.restore()
    finally:
        ckpt.close()
    if meta.get("model_kind") != MODEL_KIND:
        raise ValueError(f"{path} holds a padded AST checkpoint, not an ElasticAST one; "
                         "evaluate it with fast_ast_jax.train.evaluation")
    fields = model_fields_from_meta(meta)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return state["params"], ElasticAST(**fields), meta


def evaluate_elastic_checkpoint(path: str | Path, *, config=None, split: str = "eval",
                                settings: Sequence[dict] = ({},),
                                echo=print) -> list[dict[str, Any]]:
    """The (eval_hops_ms x eval_max_frames) table of a checkpoint for each model setting
    (e.g. {"tome_r": 8}); data and table axes from `config` (default: the checkpoint's)."""
    params, model, meta = load_elastic_checkpoint(path)
    config = config or ml_collections.ConfigDict(meta["config"])
    kwargs = config.data[split].to_dict()
    if not kwargs:
        raise ValueError(f"config.data.{split} is empty: nothing to evaluate on")
    frontend = FrontEnd.from_dict(meta["frontend"])
    source = make_source(config.data.source, sample_rate=frontend.sample_rate, **kwargs)
    if list(source.labels) != list(meta["labels"]):
        raise ValueError(f"the {split} data labels {list(source.labels)} differ from the "
                         f"checkpoint's {meta['labels']}")
    rows = []
    for setting in settings:
        variant = model.clone(**setting)
        rows += [{**setting, **row} for row in elastic_sweep(
            params, model=variant, source=source, frontend=frontend,
            spec=pack_spec(config, variant), hops_ms=config.elastic.eval_hops_ms,
            max_frames=config.elastic.eval_max_frames, multi_label=meta["loss"] == "sigmoid",
            on_bad_clip=config.data.on_bad_clip)]
    if echo:
        echo(format_table(rows))
    return rows
