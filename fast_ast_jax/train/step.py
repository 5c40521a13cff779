"""The train step (a pure function of state and batch), for padded and packed batches."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from fast_ast_jax import models
from fast_ast_jax.audio.augment_jax import device_batch
from fast_ast_jax.train import losses
from fast_ast_jax.train.forward import kind_of, reconstruction_loss
from fast_ast_jax.train.state import TrainState


def loss_fn_for(kind: str):
    """"softmax" (single-label CE) or "sigmoid" (multi-label BCE)."""
    if kind == "softmax":
        return losses.softmax_xent
    if kind == "sigmoid":
        return losses.sigmoid_xent
    raise ValueError(f"loss {kind!r} must be 'softmax' or 'sigmoid'")


def update_if_finite(state: TrainState, *, grads, value: jax.Array,
                     tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """The optimiser update of `grads`, skipped when `value` or the gradient norm is not
    finite (params and opt_state stay as they were); the step counter advances either way.

    Returns the new state and {"grad_norm", "skipped_nonfinite" (0. or 1.)}.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    state = state.replace(params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state), step=state.step + 1)
    return state, {"grad_norm": grad_norm,
                   "skipped_nonfinite": 1.0 - finite.astype(jnp.float32)}


def classify(model, params, batch: dict, *, rng, loss: str, distill: float | None
             ) -> tuple[jax.Array, dict]:
    """Objective "classify": cross-entropy of the per-clip logits (`forward.kind_of`, padded
    or packed) against the labels, or with `distill` = lam CMKD (losses.distill_loss) against
    the teacher predictions too. Returns the loss and {"accuracy", "clips"} (with
    distillation also task_loss and kd_loss, the two unweighted terms)."""
    clips = kind_of(model).forward(model, params, batch, train=True, rng=rng)
    kw = dict(logits=clips.logits, weights=clips.mask)
    if distill is None:
        value, terms = loss_fn_for(loss)(labels=clips.targets, **kw), {}
    else:
        kw["multilabel"] = loss == "sigmoid"
        value = losses.distill_loss(labels=clips.targets, teacher_probs=clips.teacher_probs,
                                    lam=distill, **kw)
        terms = {"task_loss": losses.task_loss(labels=clips.targets, **kw),
                 "kd_loss": losses.kd_loss(teacher_probs=clips.teacher_probs, **kw)}
    correct = jnp.argmax(clips.logits, -1) == jnp.argmax(clips.targets, -1)
    count = clips.mask.sum()
    return value, {"accuracy": (correct * clips.mask).sum() / jnp.maximum(count, 1),
                   "clips": count, **terms}


def reconstruct(model, params, batch: dict, *, rng, loss: str, distill: float | None
                ) -> tuple[jax.Array, dict]:
    """Objective "reconstruct" (masked pretraining, models.mae.MAE): the per-clip masked
    reconstruction loss, the mask drawn from `rng`, averaged over the real clips (batch
    mask); labels are not read. Returns the loss and {"clips"}."""
    per_clip = reconstruction_loss(model, params, batch, key=rng)
    weights = batch["mask"]
    count = weights.sum()
    return (per_clip * weights).sum() / jnp.maximum(count, 1), {"clips": count}


# What a train step optimises, per model kind (models.KINDS[...].objective).
OBJECTIVES = {"classify": classify, "reconstruct": reconstruct}


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               loss: str, lr_fn: optax.Schedule,
               distill: float | None = None, frontend=None,
               augment=None) -> tuple[TrainState, dict]:
    """One optimiser step of the model kind's objective (`OBJECTIVES`,
    `models.objective(model)`) on a padded or a packed batch.

    batch: padded (x (B, frames, bins), y (B, C), mask (B,)) or packed (data.packed: y
        (R, S, C), mask (R, S) per slot); with `distill` = lam (the ground-truth weight)
        also teacher_probs shaped like y, the teacher predictions at the distillation
        temperature (data.clips.teacher_probs), and the loss is losses.distill_loss
        (CMKD) on per-clip logits. A padded batch may hold wave (B, samples) / wave_len
        (B,) in place of x (config.frontend.on_device): `frontend` makes the features and
        `augment` (audio.augment.Augment) augments them here, on the device.
    Returns the new state and scalar metrics: loss, grad_norm, lr, skipped_nonfinite,
    clips (real clips in the batch), and the objective's own (`classify`: accuracy, with
    distillation task_loss and kd_loss; `reconstruct`: none more).

    The step's key (state.rng folded with the step) draws dropout (classify) or the patch
    mask (reconstruct). A non-finite loss or gradient norm skips the update
    (`update_if_finite`): the step counter still advances (the batch is consumed, so the
    data position, dropout key and lr schedule stay tied to the step).
    """
    rng, lr = jax.random.fold_in(state.rng, state.step), lr_fn(state.step)
    if "wave" in batch:  # the on-device front-end (fast_ast_jax.audio.augment_jax)
        rng, key = jax.random.split(rng)
        batch = device_batch(batch, frontend=frontend, augment=augment, key=key)
    objective = functools.partial(OBJECTIVES[models.objective(model)], model, rng=rng,
                                  loss=loss, distill=distill)
    (value, terms), grads = jax.value_and_grad(
        lambda params: objective(params, batch), has_aux=True)(state.params)
    state, guard = update_if_finite(state, grads=grads, value=value, tx=tx)
    return state, {"loss": value, "lr": lr, **guard, **terms}
