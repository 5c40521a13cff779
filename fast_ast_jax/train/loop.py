"""train_and_evaluate(config, workdir): the whole training run, resumable.

Resume order (first that applies):
  1. the latest checkpoint in `workdir/checkpoints` (state + data position: the run goes on
     with the exact batch it would have seen next);
  2. `config.init_from`: pretrained weights for the encoder, fresh optimiser state;
  3. random initialisation from `config.seed`.
"""
from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from fast_ast_jax import sharding
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import make_source
from fast_ast_jax.data.pipeline import Augment, Pipeline
from fast_ast_jax.models import create_ast, create_cnn, model_fields, model_name
from fast_ast_jax.train import metrics as metrics_lib
from fast_ast_jax.train.checkpoint import Checkpointer
from fast_ast_jax.train.state import TrainState, learning_rate_schedule, make_optimizer
from fast_ast_jax.train.step import eval_step, train_step
from fast_ast_jax.train.validate import validate_config


def build_model(model_config, *, num_classes: int, frontend: FrontEnd):
    """config.model.name "ast" (sized by config.model) or "cnn" (config.model.cnn fields),
    with the input shape of the front-end."""
    name = model_config.get("name", "ast")
    if name == "cnn":
        return create_cnn(num_classes=num_classes, num_mel_bins=frontend.num_mel_bins,
                          dtype=model_config.dtype, **model_config.cnn.to_dict())
    if name != "ast":
        raise ValueError(f"config.model.name={name!r}: use 'ast' or 'cnn'")
    fields = {k: v for k, v in model_config.items()
              if k not in ("size", "name", "cnn") and v is not None}
    return create_ast(model_config.size, num_classes=num_classes,
                      num_mel_bins=frontend.num_mel_bins, frames=frontend.target_frames,
                      **fields)


def build_pipeline(config, split: str, *, frontend: FrontEnd, train: bool,
                   source=None, teacher=None, waves: bool = False) -> Pipeline | None:
    """Pipeline over config.data.<split> (None if that split has no arguments); `teacher`
    (distill.TeacherLogits) adds each clip's teacher logits to its batches; `waves` ships
    waveforms for the on-device front-end."""
    kwargs = config.data[split].to_dict()
    if not kwargs:
        return None
    source = source or make_source(config.data.source, sample_rate=frontend.sample_rate,
                                   **kwargs)
    batch = config.batch_size if train else (config.eval_batch_size or 2 * config.batch_size)
    return Pipeline(source, frontend=frontend, batch_size=batch, train=train,
                    seed=config.seed, augment=Augment(**config.augment) if train else Augment(),
                    cache=config.data.cache, cache_dir=config.data.cache_dir or None,
                    cache_key=json.dumps([config.data.source, kwargs], sort_keys=True),
                    teacher=teacher, on_bad_clip=config.data.on_bad_clip, waves=waves)


def loss_kind(config, multi_label: bool) -> str:
    return config.loss or ("sigmoid" if multi_label else "softmax")


@functools.lru_cache(maxsize=8)
def _eval_fns(model, mesh, frontend):
    """Jitted forward and label gather, cached so periodic evals compile once."""
    replicated = NamedSharding(mesh, P())
    fwd = jax.jit(functools.partial(eval_step, model=model, frontend=frontend),
                  out_shardings=replicated)
    gather = jax.jit(lambda b: (b["y"], b["mask"]), out_shardings=replicated)
    return fwd, gather


def evaluate(params, *, model, pipeline: Pipeline, mesh, multi_label: bool,
             desc: str = "eval") -> dict[str, float]:
    """accuracy (and mAP for multi-label) over one pass of `pipeline`, plus clips/s of the
    model alone (jitted forward, compilation excluded)."""
    fwd, gather = _eval_fns(model, mesh, pipeline.frontend)
    logits, targets, masks, seconds, clips = [], [], [], 0.0, 0
    for i, (local, _) in enumerate(tqdm(pipeline.iterate(), total=pipeline.steps_per_epoch,
                                        desc=desc, leave=False,
                                        disable=jax.process_index() != 0)):
        batch = sharding.global_batch(local, mesh)
        if i == 0:
            jax.block_until_ready(fwd(params, batch))  # compile outside the timing
        start = time.perf_counter()
        out = jax.block_until_ready(fwd(params, batch))
        seconds += time.perf_counter() - start
        y, m = gather(batch)
        logits.append(np.asarray(out))
        targets.append(np.asarray(y))
        masks.append(np.asarray(m))
        clips += int(masks[-1].sum())
    mask = np.concatenate(masks) > 0
    logits, targets = np.concatenate(logits)[mask], np.concatenate(targets)[mask]
    result = {"accuracy": metrics_lib.accuracy(logits=logits, targets=targets),
              "clips_per_s": clips / max(seconds, 1e-9), "num_clips": float(len(logits))}
    result["bad_clips"] = float(len(pipeline.bad_clips))
    if multi_label:
        result["mAP"] = metrics_lib.mean_average_precision(logits=logits, targets=targets)
    return result


def _init_from(path: str, model, *, seed: int, fresh):
    """Pretrained weights: a fast_ast_jax training workdir / checkpoints dir (same model
    geometry required; a fresh head when the class count differs), or HF dir, AST .pth,
    timm DeiT adapted to this model's position grid (fast_ast_jax.convert).

    fresh: this model's freshly initialised params (shapes to check against, and the head).
    """
    from fast_ast_jax.train.evaluation import checkpoint_dir, is_checkpoint_dir

    if is_checkpoint_dir(path):
        from fast_ast_jax.train.checkpoint import check_shapes
        from fast_ast_jax.train.evaluation import load_checkpoint

        params = dict(load_checkpoint(path).params)
        if params["head"]["kernel"].shape != fresh["head"]["kernel"].shape:
            params["head"] = fresh["head"]  # another label set: new classifier
        check_shapes(params, fresh, where=f"config.init_from {checkpoint_dir(path)}",
                     exact=True)
        return params
    from fast_ast_jax import convert

    return convert.load_into(model, path, seed=seed)


class _Preemption:
    """SIGTERM (preemption notice) or SIGINT (Ctrl-C) -> finish the step under way, save a
    checkpoint and stop. A second SIGINT interrupts at once (the usual KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler
                pass

    def _handle(self, signum, _frame):
        self.requested = True
        if signum == signal.SIGINT:  # the next Ctrl-C is not deferred
            signal.signal(signum, self._old[signum])

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def check_resumable(saved: dict, requested: dict, *, directory) -> None:
    """Refuse to resume a checkpoint made for another model, front-end or label set.

    Orbax restores a subset of a larger tree without complaint (a 12-block checkpoint into a
    6-block model), so resuming with a changed config would silently train something else.
    """
    for key in ("model", "frontend", "labels", "loss"):
        # JSON round trip: tuples in the live config are lists in the saved metadata.
        want = json.loads(json.dumps(requested[key]))
        have = saved.get(key)
        if key == "frontend" and isinstance(have, dict):  # fields added later: defaults
            have = FrontEnd.from_dict(have).to_dict()
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            detail = ", ".join(f"{k}: checkpoint {have.get(k)!r} vs config {want.get(k)!r}"
                               for k in diff)
        else:
            detail = f"checkpoint {have!r} vs config {want!r}"
        raise ValueError(f"{directory}: cannot resume, the checkpoint's {key} differs from the "
                         f"config ({detail}); use a new --workdir or the original config")


def resume(ckpt: Checkpointer, *, target, meta: dict) -> tuple[Any, tuple[int, int]]:
    """(state, data position) of the newest readable checkpoint that matches `meta`.

    Unreadable (half-written, corrupted) steps are skipped and moved aside, so they can be
    written again; a checkpoint of another model / front-end / label set is an error.
    """
    state, saved = ckpt.restore(target=target, fallback=True, check_meta=functools.partial(
        check_resumable, requested=meta, directory=ckpt.directory))
    ckpt.quarantine(ckpt.unreadable)
    position = tuple(saved["data_position"])
    if jax.process_index() == 0:
        print(f"resumed from step {int(state.step)} at data position {position}")
    return state, position


def run_steps(state, *, step_fn: Callable, batches: Iterator, position: tuple[int, int],
              total_steps: int, steps_per_epoch: float, config, ckpt: Checkpointer,
              meta: dict, writer: metrics_lib.MetricWriter, bad_clips: Callable[[], int],
              evaluate_fn: Callable[[Any], dict] | None = None) -> tuple[Any, dict[str, Any]]:
    """The training loop shared by the padded and the packed (ElasticAST) runs.

    step_fn(state, batch) -> (state, metrics) runs one step on a host batch from `batches`
    (which yields (batch, data position after it)); metrics are those of step.train_step
    ("loss", "skipped_nonfinite", "clips", ...). Around it: a progress bar; logs every
    config.log_every steps (means over the finite steps, clips/s, epoch, bad clips) to
    stdout, TensorBoard and metrics.jsonl; `evaluate_fn(state)` every config.eval_every steps
    and at the end; a checkpoint with the data position every config.checkpoint_every steps
    and at the end; and the failure paths:
    - a data error saves the progress so far, then raises;
    - config.max_consecutive_nonfinite skipped (non-finite) steps in a row stop the run
      with FloatingPointError naming the last good checkpoint;
    - SIGTERM / SIGINT (on any host) finish the step, save and stop.

    Returns the final state and {"step", "train_loss", "eval_<metric>"...}.
    """
    is_main = jax.process_index() == 0
    preemption = _Preemption()
    step = int(state.step)
    final: dict[str, Any] = {"step": step}
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not is_main)
    window, window_start = [], time.perf_counter()
    nonfinite_run = 0  # consecutive skipped (non-finite) steps
    try:
        while step < total_steps:
            try:
                batch, position = next(batches)
            except Exception:  # a data error: keep the progress made so far
                ckpt.save(step, state, {**meta, "data_position": list(position)}, force=True)
                raise
            state, m = step_fn(state, batch)
            step += 1
            bar.update(1)
            window.append(m)
            nonfinite_run = nonfinite_run + 1 if float(m["skipped_nonfinite"]) else 0
            if nonfinite_run >= config.max_consecutive_nonfinite:
                raise FloatingPointError(
                    f"{nonfinite_run} consecutive steps (up to step {step}) had a non-finite "
                    f"loss or gradient and were skipped; stopping. The last good checkpoint "
                    f"is step {ckpt.latest_step()} in {ckpt.directory}. Lower optim.lr, check "
                    "the data for NaN/Inf, or raise config.max_consecutive_nonfinite")
            if step % config.log_every == 0 or step == total_steps:
                finite = [w for w in window if not float(w["skipped_nonfinite"])]
                scalars = {k: float(np.mean([float(w[k]) for w in finite or window]))
                           for k in window[0] if k != "clips"}
                scalars["skipped_nonfinite"] = float(len(window) - len(finite))
                scalars["bad_clips"] = float(bad_clips())
                scalars["clips_per_s"] = (sum(float(w["clips"]) for w in window)
                                          / (time.perf_counter() - window_start))
                scalars["epoch"] = step / steps_per_epoch
                writer.write(step, {f"train/{k}": v for k, v in scalars.items()},
                             echo=bar.write)
                final["train_loss"] = scalars["loss"]
                window, window_start = [], time.perf_counter()
            last = step == total_steps
            if evaluate_fn is not None and (last or (config.eval_every
                                                     and step % config.eval_every == 0)):
                result = evaluate_fn(state)
                writer.write(step, {f"eval/{k}": v for k, v in result.items()}, echo=bar.write)
                final.update({f"eval_{k}": v for k, v in result.items()})
                window_start = time.perf_counter()
            stop = preemption.requested
            if jax.process_count() > 1:  # a signal on any host stops all at this step
                stop = bool(multihost_utils.process_allgather(np.int32(stop)).max())
            ckpt.save(step, state, {**meta, "data_position": list(position)},
                      force=last or stop)
            if stop:
                if is_main:
                    bar.write(f"preempted: saved step {step}, stopping")
                break
    finally:
        bar.close()
        preemption.restore()
    final["step"] = step
    return state, final


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from workdir if it holds a checkpoint), evaluate at the end.

    Returns:
        {"step", "train_loss", "eval_accuracy", "eval_clips_per_s", ... (mAP for
        multi-label), "state": the final TrainState}.
    """
    sharding.initialize_distributed(config.distributed)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    frontend = FrontEnd.from_dict(config.frontend.to_dict())
    validate_config(config, device_count=jax.device_count())

    # --- data ------------------------------------------------------------------------------
    teacher = None
    if config.distill.teacher_logits:  # checked against the whole split before step 1
        from fast_ast_jax import distill

        teacher = distill.load(config.distill.teacher_logits)
    train_data = build_pipeline(config, "train", frontend=frontend, train=True,
                                teacher=teacher, waves=frontend.on_device)
    source = train_data.source
    labels = list(source.labels)
    eval_data = build_pipeline(config, "eval", frontend=frontend, train=False,
                               waves=frontend.on_device)
    if eval_data is not None and list(eval_data.source.labels) != labels:
        raise ValueError(f"train labels {labels} differ from eval labels "
                         f"{list(eval_data.source.labels)}; give config.data.*.labels")
    loss = loss_kind(config, source.multi_label)
    steps_per_epoch = train_data.steps_per_epoch
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch

    # --- model, optimiser, state -------------------------------------------------------------
    model = build_model(config.model, num_classes=len(labels), frontend=frontend)
    lr_fn = learning_rate_schedule(config.optim, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch)
    tx = make_optimizer(config.optim, lr_fn)
    mesh = sharding.make_mesh()
    replicated = NamedSharding(mesh, P())

    def init(key):
        init_key, train_key = jax.random.split(key)
        dummy = jnp.zeros((1, frontend.target_frames, frontend.num_mel_bins), jnp.float32)
        params = model.init({"params": init_key}, dummy)["params"]
        return TrainState(params=params, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=train_key)

    key = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init, key)
    shardings = TrainState(
        params=sharding.param_shardings(abstract.params, mesh, mode=config.param_sharding),
        opt_state=sharding.param_shardings(abstract.opt_state, mesh,
                                           mode=config.param_sharding),
        step=replicated, rng=replicated)
    meta = {"model": model_fields(model), "model_class": model_name(model),
            "frontend": frontend.to_dict(), "labels": labels,
            "loss": loss, "config": json.loads(config.to_json_best_effort())}

    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint_every,
                        keep=config.keep_checkpoints)
    position = (0, 0)
    if ckpt.latest_step() is not None:  # 1. resume
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, position = resume(ckpt, target=target, meta=meta)
    else:
        state = jax.jit(init, out_shardings=shardings)(key)  # 3. random
        if config.init_from and config.model.name != "ast":
            raise ValueError(f"config.init_from={config.init_from!r} loads AST weights; "
                             f"config.model.name={config.model.name!r} cannot use them")
        if config.init_from:  # 2. pretrained
            params = _init_from(config.init_from, model, seed=config.seed,
                                fresh=state.params)
            params = jax.device_put(params, shardings.params)
            state = jax.jit(lambda p, s: s.replace(params=p, opt_state=tx.init(p)),
                            out_shardings=shardings)(params, state)

    kd = (float(config.distill.lam), float(config.distill.tau)) if teacher else None
    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, loss=loss, lr_fn=lr_fn,
                                        distill=kd, frontend=frontend,
                                        augment=Augment(**config.augment)),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(shardings, replicated), donate_argnums=0)

    # --- train loop --------------------------------------------------------------------------
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)

    def evaluate_fn(state):
        return evaluate(state.params, model=model, pipeline=eval_data, mesh=mesh,
                        multi_label=source.multi_label)

    try:
        state, final = run_steps(
            state, step_fn=lambda s, b: step_fn(s, sharding.global_batch(b, mesh)),
            batches=train_data.iterate(epoch=position[0], index=position[1]),
            position=position, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            config=config, ckpt=ckpt, meta=meta, writer=writer,
            bad_clips=lambda: len(train_data.bad_clips),
            evaluate_fn=evaluate_fn if eval_data is not None else None)
    finally:
        ckpt.close()
        writer.close()
    final["state"] = state
    return final
