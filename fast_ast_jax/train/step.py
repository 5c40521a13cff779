"""The train step (a pure function of state and batch), for padded and packed batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fast_ast_jax.audio.augment_jax import device_batch
from fast_ast_jax.train import losses
from fast_ast_jax.train.forward import kind_of
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


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               loss: str, lr_fn: optax.Schedule,
               distill: float | None = None, frontend=None,
               augment=None) -> tuple[TrainState, dict]:
    """One optimiser step on a padded or a packed batch (`forward.kind_of(model)` turns it
    into per-clip logits, targets and mask, so the loss is the same for both).

    batch: padded (x (B, frames, bins), y (B, C), mask (B,)) or packed (data.packed: y
        (R, S, C), mask (R, S) per slot); with `distill` = lam (the ground-truth weight)
        also teacher_probs shaped like y, the teacher predictions at the distillation
        temperature (data.pipeline.teacher_probs), and the loss is losses.distill_loss
        (CMKD) on per-clip logits. A padded batch may hold wave (B, samples) / wave_len
        (B,) in place of x (config.frontend.on_device): `frontend` makes the features and
        `augment` (data.pipeline.Augment) augments them here, on the device.
    Returns the new state and scalar metrics (loss, accuracy, grad_norm, lr,
    skipped_nonfinite, clips (real clips in the batch); with distillation also task_loss
    and kd_loss, the two unweighted terms).

    A non-finite loss or gradient norm skips the update (`update_if_finite`): the step
    counter still advances (the batch is consumed, so the data position, dropout key and lr
    schedule stay tied to the step).
    """
    rng, lr = jax.random.fold_in(state.rng, state.step), lr_fn(state.step)
    xent = loss_fn_for(loss)
    if "wave" in batch:  # the on-device front-end (fast_ast_jax.audio.augment_jax)
        rng, key = jax.random.split(rng)
        batch = device_batch(batch, frontend=frontend, augment=augment, key=key)
    forward = kind_of(model).forward

    def objective(params):
        clips = forward(model, params, batch, train=True, rng=rng)
        kw = dict(logits=clips.logits, weights=clips.mask)
        if distill is None:
            return xent(labels=clips.targets, **kw), (clips, {})
        kw["multilabel"] = loss == "sigmoid"
        value = losses.distill_loss(labels=clips.targets, teacher_probs=clips.teacher_probs,
                                    lam=distill, **kw)
        terms = {"task_loss": losses.task_loss(labels=clips.targets, **kw),
                 "kd_loss": losses.kd_loss(teacher_probs=clips.teacher_probs, **kw)}
        return value, (clips, terms)

    (value, (clips, terms)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    state, guard = update_if_finite(state, grads=grads, value=value, tx=tx)
    correct = jnp.argmax(clips.logits, -1) == jnp.argmax(clips.targets, -1)
    metrics = {
        "loss": value,
        "accuracy": (correct * clips.mask).sum() / jnp.maximum(clips.mask.sum(), 1),
        "lr": lr,
        "clips": clips.mask.sum(),
        **guard,
        **terms,
    }
    return state, metrics
