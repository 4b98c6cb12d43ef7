"""Learning-rate schedules: pure functions of (epoch, step), so resume needs no state.

``epoch`` and ``step`` are 0-based (the first step of the first epoch is (0, 0)); the
rate applies to that step. Warm-up is linear over ``schedule.warmup`` epochs, per step
(Goyal et al. 2017, "Accurate, Large Minibatch SGD"); ``step`` multiplies the rate by
``gamma`` every ``step_size`` epochs; ``cosine`` anneals per step from the base rate to
``min_lr`` over the epochs after warm-up (Loshchilov and Hutter 2017, "SGDR").
"""

from __future__ import annotations

import math

from cnncli.spec.model import Schedule


def lr_at(
    schedule: Schedule,
    base_lr: float,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    epochs: int,
) -> float:
    """The learning rate for step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be at least 1")
    warmup = max(0, int(schedule.warmup))
    done = epoch * steps_per_epoch + step  # steps completed before this one
    if warmup and epoch < warmup:
        return base_lr * (done + 1) / (warmup * steps_per_epoch)
    kind = schedule.type
    if kind == "none":
        return base_lr
    if kind == "step":
        return base_lr * schedule.gamma ** (epoch // max(1, int(schedule.step_size)))
    if kind == "cosine":
        span = (epochs - warmup) * steps_per_epoch
        if span <= 0:
            return base_lr
        progress = min(1.0, (done - warmup * steps_per_epoch) / span)
        floor = schedule.min_lr
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule type {kind!r}")


def epoch_lrs(schedule: Schedule, base_lr: float, steps_per_epoch: int, epochs: int) -> list:
    """The rate at the first step of every epoch (what metrics.csv reports)."""
    return [lr_at(schedule, base_lr, e, 0, steps_per_epoch, epochs) for e in range(epochs)]
