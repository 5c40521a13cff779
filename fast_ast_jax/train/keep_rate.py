"""TopK keep-rate schedule for training (EViT, arXiv 2202.07800; TopK pruning in
AST, arXiv 2504.01690; docs/REFERENCES.md §5).

Training starts unpruned and lowers the keep rate of the pruning blocks from 1 to the
model's `prune_keep_rate` between two epochs with a half cosine, as EViT and the AST/AudioMAE
pruning code do (their shrink: epochs 5 to 20); evaluation always uses the final rate.

A keep rate is a trace-time constant (it fixes the static token count of every later
block), so each distinct rate is one compiled train step. The schedule therefore only takes
`num_rates` values, evenly spaced from the target to 1 (both included), rounding the cosine
*up* to the next of them (never pruning more than the cosine says): at most `num_rates`
compilations per run, each logged when it happens.

Config (`config.keep_rate_schedule`, off while end_epoch = 0):
    start_epoch: float, the rate leaves 1 here;  end_epoch: float, it reaches the target here;
    num_rates: int >= 2, the distinct rates (programs) of the run.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class KeepRateSchedule:
    """config.keep_rate_schedule as read by train.spec: the TopK keep rate's descent in
    training (its fields: this module's docstring)."""

    start_epoch: float
    end_epoch: float
    num_rates: int


def defaults() -> ml_collections.ConfigDict:
    """The `config.keep_rate_schedule` block of `train.config.default_config` (off)."""
    return ml_collections.ConfigDict(dict(start_epoch=0.0, end_epoch=0.0, num_rates=4))


def keep_rate_at(step: int, *, target: float, start_step: int, end_step: int,
                 num_rates: int) -> float:
    """Keep rate at optimiser step `step` (a pure function of its arguments).

    1 before start_step, `target` from end_step on, in between the half cosine
    target + (1 - target) * (1 + cos(pi * p)) / 2 with p = (step - start) / (end - start),
    rounded up to the grid target + (1 - target) * i / (num_rates - 1), i = 0..num_rates-1.
    """
    if num_rates < 2:
        raise ValueError(f"config.keep_rate_schedule.num_rates={num_rates}: use >= 2 (1 "
                         "and the target)")
    if not 0 <= start_step < end_step:
        raise ValueError(f"keep-rate schedule from step {start_step} to {end_step}: the "
                         "start must be >= 0 and before the end")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"config.model.prune_keep_rate={target} must lie in (0, 1]")
    p = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    fraction = (1.0 + math.cos(math.pi * p)) / 2.0  # 1 -> 0
    # round() first: cos(pi) is not exactly -1, so a reached level stays that level.
    level = math.ceil(round(fraction * (num_rates - 1), 9))
    return target + (1.0 - target) * level / (num_rates - 1)


def rate_schedule(schedule: KeepRateSchedule, *, target: float, steps_per_epoch: float
                  ) -> Callable[[int], float] | None:
    """step -> keep rate of the schedule (config.keep_rate_schedule) towards `target` (the
    model's prune_keep_rate): keep_rate_at with epochs turned into steps; None when the
    schedule is off (end_epoch = 0) or the model does not prune (target 1)."""
    first, last = schedule.start_epoch, schedule.end_epoch
    if not last or target >= 1.0:
        return None
    start, end = round(first * steps_per_epoch), round(last * steps_per_epoch)
    if not 0 <= start < end:
        raise ValueError(f"config.keep_rate_schedule: start_epoch={first} must be "
                         f">= 0 and before end_epoch={last} (steps {start}, {end})")
    kw = dict(target=float(target), start_step=start, end_step=end,
              num_rates=int(schedule.num_rates))
    keep_rate_at(0, **kw)  # validate now, not at the first step
    return lambda step: keep_rate_at(step, **kw)


def scheduled_step_fn(build: Callable[[Any], Callable], *, model,
                      schedule: KeepRateSchedule, steps_per_epoch: float,
                      echo: Callable[[str], None] = print) -> Callable:
    """The trainer's step_fn(state, batch) under the keep-rate schedule (towards the
    model's prune_keep_rate; a model without one has no schedule).

    build(model) -> a jitted step_fn(state, batch) for one model. Without a schedule this
    is build(model). With one, step s runs build(model.clone(prune_keep_rate=rate(s))),
    built (and compiled) once per distinct rate and logged through `echo`; the step number
    is read from the state once, then counted on the host (no device sync per step).
    """
    rate_at = rate_schedule(schedule, target=getattr(model, "prune_keep_rate", 1.0),
                            steps_per_epoch=steps_per_epoch)
    if rate_at is None:
        return build(model)
    steps: dict[float, Callable] = {}
    position: list[int] = []

    def step_fn(state, batch):
        if not position:
            position.append(int(state.step))
        rate = rate_at(position[0])
        if rate not in steps:
            echo(f"keep-rate schedule: step {position[0]} compiles the train step for "
                 f"prune_keep_rate={rate:.4g} (program {len(steps) + 1} of at most "
                 f"{int(schedule.num_rates)})")
            steps[rate] = build(model.clone(prune_keep_rate=rate))
        position[0] += 1
        return steps[rate](state, batch)

    step_fn.compiled_rates = steps  # for tests and logs: rate -> step function
    return step_fn
