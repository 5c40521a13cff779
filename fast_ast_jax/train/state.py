"""Train state and optimiser (optax): AdamW/Adam, linear warm-up, cosine/step decay, clipping."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes (a pytree; checkpointed as is).

    rng is the run's base key (raw uint32 (2,)); each step folds in the step number, so the
    dropout noise of step s is the same after a resume.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def learning_rate_schedule(opt, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 over `opt.warmup_steps`, then "cosine" to 0 at total_steps,
    "step" (x `decay_rate` every `decay_epochs` epochs after `decay_start_epoch`, as AST's
    MultiStepLR), or "constant"."""
    warmup = int(opt.warmup_steps)
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(opt.lr, max(1, total_steps - warmup))
    elif opt.schedule == "step":
        # Epoch e (0-based) >= start runs at lr * rate^(1 + (e - start) // decay_epochs).
        firsts = range(opt.decay_start_epoch * steps_per_epoch, total_steps,
                       max(1, opt.decay_epochs * steps_per_epoch))
        boundaries = {max(1, s - warmup): opt.decay_rate for s in firsts}
        decay = optax.piecewise_constant_schedule(opt.lr, boundaries)
    elif opt.schedule == "constant":
        decay = optax.constant_schedule(opt.lr)
    else:
        raise ValueError(f"optim.schedule={opt.schedule!r}: use 'cosine', 'step' or 'constant'")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def make_optimizer(opt, lr: optax.Schedule) -> optax.GradientTransformation:
    """The optimiser, with global-norm gradient clipping first (opt.clip_norm, 0 = off).

    opt.name "adam": L2 regularisation as AST trains (torch Adam's weight_decay, 5e-7):
        opt.weight_decay * params is added to the gradient *before* Adam's moment
        estimates, so it is rescaled per parameter like the rest of the gradient.
    opt.name "adamw": decoupled weight decay (Loshchilov & Hutter): Adam's update plus
        lr * opt.weight_decay * params, outside the moment estimates.
    """
    if opt.name == "adamw":
        core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    elif opt.name == "adam":
        core = optax.chain(optax.add_decayed_weights(opt.weight_decay) if opt.weight_decay
                           else optax.identity(), optax.adam(lr, b1=opt.b1, b2=opt.b2))
    else:
        raise ValueError(f"optim.name={opt.name!r}: use 'adamw' or 'adam'")
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), core)
    return core
