"""Learning-rate schedules against values computed by hand."""

from __future__ import annotations

import math

import pytest

from cnncli.spec.model import Schedule
from cnncli.train.schedules import epoch_lrs, lr_at


def test_none_is_constant():
    s = Schedule(type="none")
    for e, st in [(0, 0), (3, 7), (9, 9)]:
        assert lr_at(s, 0.1, e, st, 10, 10) == 0.1


def test_step_decays_every_step_size_epochs():
    s = Schedule(type="step", step_size=2, gamma=0.5)
    got = [lr_at(s, 0.1, e, 3, 10, 6) for e in range(6)]
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-12)


def test_cosine_hand_values():
    s = Schedule(type="cosine")
    # 4 epochs of 10 steps: progress = completed steps / 40.
    assert lr_at(s, 0.1, 0, 0, 10, 4) == pytest.approx(0.1)
    # progress 10/40 = 0.25: 0.05 * (1 + cos(pi/4)) = 0.0853553390593...
    assert lr_at(s, 0.1, 1, 0, 10, 4) == pytest.approx(0.08535533905932737, rel=1e-12)
    assert lr_at(s, 0.1, 2, 0, 10, 4) == pytest.approx(0.05, rel=1e-12)
    # the last step: progress 39/40 -> 0.05 * (1 - 0.996917333733128) = 1.5413331334e-4
    assert lr_at(s, 0.1, 3, 9, 10, 4) == pytest.approx(1.5413331334360e-4, rel=1e-9)


def test_cosine_floor():
    s = Schedule(type="cosine", min_lr=0.01)
    assert lr_at(s, 0.1, 2, 0, 10, 4) == pytest.approx(0.055, rel=1e-12)
    assert lr_at(s, 0.1, 0, 0, 10, 4) == pytest.approx(0.1, rel=1e-12)


def test_warmup_then_cosine():
    s = Schedule(type="cosine", warmup=1)
    # warm-up: 4 steps rising linearly to the base rate 0.2
    assert [lr_at(s, 0.2, 0, k, 4, 3) for k in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    # then cosine over the remaining 2 epochs (8 steps)
    assert lr_at(s, 0.2, 1, 0, 4, 3) == pytest.approx(0.2)
    assert lr_at(s, 0.2, 2, 0, 4, 3) == pytest.approx(0.1)
    assert lr_at(s, 0.2, 1, 2, 4, 3) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))


def test_warmup_then_step_counts_absolute_epochs():
    s = Schedule(type="step", step_size=2, gamma=0.1, warmup=1)
    assert lr_at(s, 1.0, 0, 0, 2, 5) == pytest.approx(0.5)
    assert lr_at(s, 1.0, 0, 1, 2, 5) == pytest.approx(1.0)
    assert lr_at(s, 1.0, 1, 0, 2, 5) == pytest.approx(1.0)
    assert lr_at(s, 1.0, 2, 0, 2, 5) == pytest.approx(0.1)
    assert lr_at(s, 1.0, 4, 1, 2, 5) == pytest.approx(0.01)


def test_schedule_is_a_pure_function_of_epoch_and_step():
    s = Schedule(type="cosine", warmup=2, min_lr=0.001)
    a = [lr_at(s, 0.05, e, k, 7, 9) for e in range(9) for k in range(7)]
    b = [lr_at(s, 0.05, e, k, 7, 9) for e in range(9) for k in range(7)]
    assert a == b
    assert epoch_lrs(s, 0.05, 7, 9) == [lr_at(s, 0.05, e, 0, 7, 9) for e in range(9)]
    assert all(x > 0 for x in a)


def test_cosine_with_no_epochs_after_warmup_keeps_base():
    s = Schedule(type="cosine", warmup=3)
    assert lr_at(s, 0.1, 3, 0, 5, 3) == 0.1


def test_bad_arguments():
    with pytest.raises(ValueError):
        lr_at(Schedule(type="cosine"), 0.1, 0, 0, 0, 3)
    with pytest.raises(ValueError):
        lr_at(Schedule(type="exotic"), 0.1, 0, 0, 5, 3)
