"""train_and_evaluate(config, workdir): the whole training run, resumable.

The config is read once, at the top (train.spec.read_config); everything below takes
the run's description.

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

from fast_ast_jax import checkpoints, sharding, teacher_logits
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.models import (from_fields, model_fields, model_name, name_from_meta,
                                 objective)
from fast_ast_jax.train import keep_rate
from fast_ast_jax.train import metrics as metrics_lib
from fast_ast_jax.checkpoints.store import Checkpointer, model_fields_from_meta
from fast_ast_jax.train.forward import evaluate, kind_of
from fast_ast_jax.train.table import format_table
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.state import TrainState, learning_rate_schedule, make_optimizer
from fast_ast_jax.train.step import train_step
from fast_ast_jax.train.task import Task, make_task
from fast_ast_jax.train.validate import validate


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


# Model fields that no config key sets and that checkpoints of older versions hold with
# another value (their metadata lacks them: `checkpoints.store.model_fields_from_meta`):
# a resumed run takes the checkpoint's, the meaning it was trained with (`resume`).
CHECKPOINT_FIELDS = ("reduce_last_block",)


def check_resumable(saved: dict, requested: dict, *, directory) -> None:
    """Refuse to resume a checkpoint made for another model, front-end or label set.

    Orbax restores a subset of a larger tree without complaint (a 12-block checkpoint into a
    6-block model), so resuming with a changed config would silently train something else.
    The model's CHECKPOINT_FIELDS are not compared: the resumed run takes them.
    """
    for key in ("model", "frontend", "labels", "loss"):
        # JSON round trip: tuples in the live config are lists in the saved metadata.
        want = json.loads(json.dumps(requested[key]))
        have = saved.get(key)
        if key == "frontend" and isinstance(have, dict):  # fields added later: defaults
            have = FrontEnd.from_dict(have).to_dict()
        if key == "model" and isinstance(have, dict):
            missing = [k for k in want if k not in have]
            if missing:  # fields added later, absent from older checkpoints: defaults
                full = json.loads(json.dumps(model_fields(from_fields(
                    name_from_meta(saved), model_fields_from_meta(saved)))))
                have = {**{k: full[k] for k in missing if k in full}, **have}
            have, want = ({k: v for k, v in d.items() if k not in CHECKPOINT_FIELDS}
                          for d in (have, want))
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


def resume(ckpt: Checkpointer, *, target, meta: dict, model
           ) -> tuple[Any, tuple[int, int], Any]:
    """(state, data position, model) of the newest readable checkpoint that matches `meta`;
    the model is `model` with the checkpoint's CHECKPOINT_FIELDS (so an ElasticAST run
    saved before the last block stopped reducing resumes reducing there).

    Unreadable (half-written, corrupted) steps are skipped and moved aside, so they can be
    written again; a checkpoint of another model / front-end / label set is an error.
    """
    state, saved = ckpt.restore(target=target, fallback=True, check_meta=functools.partial(
        check_resumable, requested=meta, directory=ckpt.directory))
    ckpt.quarantine(ckpt.unreadable)
    position = tuple(saved["data_position"])
    fields = model_fields_from_meta(saved)
    model = model.clone(**{k: fields[k] for k in CHECKPOINT_FIELDS if k in fields})
    if jax.process_index() == 0:
        print(f"resumed from step {int(state.step)} at data position {position}")
    return state, position, model


def run_steps(state, *, step_fn: Callable, batches: Iterator, position: tuple[int, int],
              total_steps: int, steps_per_epoch: float, log_every: int, eval_every: int,
              max_consecutive_nonfinite: int, ckpt: Checkpointer, meta: dict,
              writer: metrics_lib.MetricWriter, bad_clips: Callable[[], int],
              evaluate_fn: Callable[[Any], dict] | None = None) -> tuple[Any, dict[str, Any]]:
    """The training loop shared by the padded and the packed (ElasticAST) runs.

    step_fn(state, batch) -> (state, metrics) runs one step on a host batch from `batches`
    (which yields (batch, data position after it)); metrics are those of step.train_step
    ("loss", "skipped_nonfinite", "clips", ...). Around it: a progress bar; logs every
    `log_every` steps (means over the finite steps, clips/s, epoch, bad clips) to stdout,
    TensorBoard and metrics.jsonl; `evaluate_fn(state)` every `eval_every` steps (0: never)
    and at the end; a checkpoint with the data position when `ckpt` is due
    (config.checkpoint_every) and at the end; and the failure paths:
    - a data error saves the progress so far, then raises;
    - `max_consecutive_nonfinite` skipped (non-finite) steps in a row stop the run
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
            if nonfinite_run >= max_consecutive_nonfinite:
                raise FloatingPointError(
                    f"{nonfinite_run} consecutive steps (up to step {step}) had a non-finite "
                    f"loss or gradient and were skipped; stopping. The last good checkpoint "
                    f"is step {ckpt.latest_step()} in {ckpt.directory}. Lower optim.lr, check "
                    "the data for NaN/Inf, or raise config.max_consecutive_nonfinite")
            if step % log_every == 0 or step == total_steps:
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
            if evaluate_fn is not None and (last or (eval_every and step % eval_every == 0)):
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


def init_state(task: Task, *, tx, mesh, param_sharding: str, seed: int):
    """(init, abstract state, shardings): init(key) -> TrainState of `task.model`, its
    shapes from `jax.eval_shape` (nothing allocated) and a sharding per leaf
    (config.param_sharding for params and optimiser state; step and rng replicated)."""
    inputs = kind_of(task.model).inputs(task.example)

    def init(key):
        init_key, train_key = jax.random.split(key)
        params = task.model.init({"params": init_key}, inputs)["params"]
        return TrainState(params=params, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=train_key)

    abstract = jax.eval_shape(init, jax.random.PRNGKey(seed))
    replicated = NamedSharding(mesh, P())
    shardings = TrainState(
        params=sharding.param_shardings(abstract.params, mesh, mode=param_sharding),
        opt_state=sharding.param_shardings(abstract.opt_state, mesh, mode=param_sharding),
        step=replicated, rng=replicated)
    return init, abstract, shardings


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from workdir if it holds a checkpoint), evaluate at the end; padded
    runs and packed runs (a config with an `elastic` block) alike (train.task).

    Returns:
        {"step", "train_loss", "eval_accuracy", "eval_clips_per_s", ... (mAP for
        multi-label; masked pretraining: "eval_loss", the reconstruction loss, in place
        of accuracy), "state": the final TrainState, "train_compilations" (how often the
        train step was compiled: 1, whatever the clip lengths and hops of packed runs)};
        packed runs with eval data also "eval_table": rows {"hop_ms", "max_frames",
        "accuracy", ...} over config.elastic.eval_hops_ms x eval_max_frames.
    """
    if "://" in str(workdir):  # pathlib would make a local "gs:/..." directory
        raise ValueError(f"--workdir {workdir}: a URL is not a workdir here (checkpoints, "
                         "metrics and TensorBoard are written to a local path); mount the "
                         "bucket (gcsfuse, docs/TPU.md section 4) and give the mounted path")
    run = read_config(config)  # the one reading of the config
    sharding.initialize_distributed(run.distributed)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    validate(run, device_count=jax.device_count())

    # --- data and model ----------------------------------------------------------------------
    teacher = None
    if run.distill.teacher_logits:  # checked against the whole split before step 1
        teacher = teacher_logits.load(run.distill.teacher_logits)
    task = make_task(run, workdir=workdir, teacher=teacher)
    run, model, source, loss = task.run, task.model, task.train.source, task.loss
    # a model without a classifier (masked pretraining) has no label names to keep
    labels = list(source.labels) if objective(model) == "classify" else []
    steps_per_epoch = task.train.steps(0)
    total_steps = run.num_steps or run.num_epochs * steps_per_epoch

    # --- optimiser, state ----------------------------------------------------------------------
    lr_fn = learning_rate_schedule(run.optim, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch)
    tx = make_optimizer(run.optim, lr_fn)
    mesh = sharding.make_mesh()
    replicated = NamedSharding(mesh, P())
    init, abstract, shardings = init_state(task, tx=tx, mesh=mesh,
                                           param_sharding=run.param_sharding, seed=run.seed)
    meta = {"model": model_fields(model), "model_class": model_name(model),
            "frontend": run.frontend.to_dict(), "labels": labels, "loss": loss,
            "config": run.config}

    ckpt = Checkpointer(workdir / "checkpoints", every=run.checkpoint_every,
                        keep=run.keep_checkpoints)
    position = (0, 0)
    if ckpt.latest_step() is not None:  # 1. resume
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, position, model = resume(ckpt, target=target, meta=meta, model=model)
        meta["model"] = model_fields(model)
    else:
        state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(run.seed))
        if run.init_from:  # 2. pretrained
            params = checkpoints.init_params(run.init_from, model, seed=run.seed,
                                             fresh=state.params)
            params = jax.device_put(params, shardings.params)
            state = jax.jit(lambda p, s: s.replace(params=p, opt_state=tx.init(p)),
                            out_shardings=shardings)(params, state)

    kd = float(run.distill.lam) if teacher else None
    scheduled = keep_rate.scheduled_step_fn(  # one jitted step per scheduled keep rate
        lambda m: jax.jit(functools.partial(train_step, model=m, tx=tx, loss=loss,
                                            lr_fn=lr_fn, distill=kd, frontend=run.frontend,
                                            augment=run.augment),
                          in_shardings=(shardings, sharding.batch_sharding(mesh)),
                          out_shardings=(shardings, replicated), donate_argnums=0),
        model=model, schedule=run.keep_rate_schedule, steps_per_epoch=steps_per_epoch,
        echo=tqdm.write)
    check = kind_of(model).check

    def step_fn(state, local):
        check(model, local)
        return scheduled(state, sharding.global_batch(local, mesh))

    # --- train loop --------------------------------------------------------------------------
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
    evaluated: dict[int, dict] = {}  # step -> periodic result (the table's first row)

    def evaluate_fn(state):
        result = evaluate(state.params, model=model, pipeline=task.evals[0][2], mesh=mesh,
                          multi_label=source.multi_label)
        evaluated[int(state.step)] = result
        return result

    batches = task.train.iterate(epoch=position[0], index=position[1])
    try:
        state, final = run_steps(
            state, step_fn=step_fn, batches=batches,
            position=position, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            log_every=run.log_every, eval_every=run.eval_every,
            max_consecutive_nonfinite=run.max_consecutive_nonfinite, ckpt=ckpt, meta=meta,
            writer=writer,
            bad_clips=lambda: len(task.train.bad_clips),
            evaluate_fn=evaluate_fn if task.evals else None)
        if task.has_table and final["step"] == total_steps:
            table = []
            for i, (name, key, pipeline) in enumerate(task.evals):
                result = evaluated.get(total_steps) if i == 0 else None
                result = result or evaluate(state.params, model=model, pipeline=pipeline,
                                            mesh=mesh, multi_label=source.multi_label,
                                            desc=name)
                writer.write(final["step"], {f"eval/{name}/{k}": v for k, v in result.items()})
                table.append({**key, **result})
            final["eval_table"] = table
            if is_main:
                print(format_table(table))
    finally:
        batches.close()  # stops the loader's thread / worker processes
        ckpt.close()
        writer.close()
    programs = getattr(scheduled, "compiled_rates", {None: scheduled}).values()
    return {**final, "state": state,
            "train_compilations": sum(p._cache_size() for p in programs)}
