"""The jitted train and eval steps (pure functions of state and batch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fast_ast_jax.audio.augment_jax import device_batch
from fast_ast_jax.train import losses
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
               distill: tuple[float, float] | None = None, frontend=None,
               augment=None) -> tuple[TrainState, dict]:
    """One optimiser step.

    batch: x (B, frames, bins), y (B, C) targets, mask (B,); with `distill` = (lam, tau)
        also teacher (B, C) teacher logits, and the loss is losses.distill_loss (CMKD).
        With wave / wave_len in place of x (config.frontend.on_device), `frontend` makes
        the features and `augment` (data.pipeline.Augment) augments them here.
    Returns the new state and scalar metrics (loss, accuracy, grad_norm, lr,
    skipped_nonfinite, clips; with distillation also task_loss and kd_loss, the two
    unweighted terms).

    A non-finite loss or gradient norm skips the update (`update_if_finite`): the step
    counter still advances (the batch is consumed, so the data position, dropout key and lr
    schedule stay tied to the step).
    """
    rng, lr = jax.random.fold_in(state.rng, state.step), lr_fn(state.step)
    xent = loss_fn_for(loss)
    if "wave" in batch:  # the on-device front-end (fast_ast_jax.audio.augment_jax)
        rng, key = jax.random.split(rng)
        batch = device_batch(batch, frontend=frontend, augment=augment, key=key)

    def objective(params):
        logits = model.apply({"params": params}, batch["x"], train=True,
                             rngs={"dropout": rng})
        if distill is None:
            return xent(logits=logits, labels=batch["y"], weights=batch["mask"]), (logits, {})
        lam, tau = distill
        kw = dict(logits=logits, weights=batch["mask"], multilabel=loss == "sigmoid")
        value = losses.distill_loss(labels=batch["y"], teacher_logits=batch["teacher"],
                                    lam=lam, tau=tau, **kw)
        terms = {"task_loss": losses.task_loss(labels=batch["y"], **kw),
                 "kd_loss": losses.kd_loss(teacher_logits=batch["teacher"], tau=tau, **kw)}
        return value, (logits, terms)

    (value, (logits, terms)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    state, guard = update_if_finite(state, grads=grads, value=value, tx=tx)
    correct = jnp.argmax(logits, -1) == jnp.argmax(batch["y"], -1)
    metrics = {
        "loss": value,
        "accuracy": (correct * batch["mask"]).sum() / jnp.maximum(batch["mask"].sum(), 1),
        "lr": lr,
        "clips": batch["mask"].sum(),
        **guard,
        **terms,
    }
    return state, metrics


def eval_step(params, batch: dict, *, model, frontend=None) -> jax.Array:
    """batch x (B, frames, bins), or wave / wave_len made into x by `frontend` -> logits
    (B, C) float32."""
    if "wave" in batch:  # dither (if any) from a fixed key: eval stays deterministic
        batch = device_batch(batch, frontend=frontend, key=jax.random.PRNGKey(0))
    return model.apply({"params": params}, batch["x"], train=False)
