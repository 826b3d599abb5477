import math

import numpy as np
import pytest

from dino_core.config import LossConfig, OptimConfig
from dino_core.train.schedules import Schedules, cosine_schedule, teacher_temp_schedule


def test_cosine_with_warmup_endpoints_and_shape():
    s = cosine_schedule(1.0, 0.1, epochs=10, iters_per_epoch=5, warmup_epochs=2)
    assert s.shape == (50,)
    assert s[0] == 0.0 and np.all(np.diff(s[:10]) > 0)          # linear warm-up from 0
    assert math.isclose(s[10], 1.0)                              # peak right after warm-up
    assert np.all(np.diff(s[10:]) <= 1e-12) and s[-1] > 0.1     # cosine decay toward final
    mid = 10 + 20
    assert math.isclose(s[mid], 0.1 + 0.45 * (1 + math.cos(math.pi * 20 / 40)))


def test_schedules_scale_lr_with_global_batch_and_momentum_goes_to_one():
    sch = Schedules.build(OptimConfig(warmup_epochs=0), LossConfig(), epochs=4, iters_per_epoch=3,
                          global_batch=512)
    assert math.isclose(sch.lr[0], 0.0005 * 2)
    assert math.isclose(sch.wd[0], 0.04) and sch.wd[-1] > 0.3
    assert math.isclose(sch.momentum[0], 0.996) and sch.momentum[-1] > 0.999


def test_teacher_temperature_warmup_then_constant():
    t = teacher_temp_schedule(0.04, 0.07, warmup_teacher_temp_epochs=30, nepochs=100)
    assert len(t) == 100 and t[0] == 0.04 and math.isclose(t[29], 0.07) and t[-1] == 0.07
    assert np.all(np.array(teacher_temp_schedule(0.04, 0.04, 0, 5)) == 0.04)


# moved from tests/dino_core/loss/test_loss_reference.py with the schedule itself
def test_teacher_temp_schedule_warms_up_linearly_then_stays():
    sched = teacher_temp_schedule(0.04, 0.07, 30, 100)
    assert len(sched) == 100
    assert sched[0] == pytest.approx(0.04)
    assert sched[29] == pytest.approx(0.07)  # the reference includes both ends
    assert sched[15] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert all(t == pytest.approx(0.07) for t in sched[30:])
    assert all(a <= b for a, b in zip(sched, sched[1:]))


def test_teacher_temp_schedule_without_warmup_is_constant():
    assert teacher_temp_schedule(0.04, 0.04, 0, 5) == (0.04,) * 5


@pytest.mark.parametrize("args,match", [((0.04, 0.07, 11, 10), "warmup_teacher_temp_epochs"),
                                        ((0.04, 0.07, 0, 0), "nepochs"),
                                        ((0.0, 0.07, 1, 10), "temperatures")])
def test_teacher_temp_schedule_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        teacher_temp_schedule(*args)


# moved from tests/dino_core/loss/test_loss_module.py: the schedule, not the loss, knows epochs
def test_epoch_outside_schedule():
    sch = Schedules.build(OptimConfig(), LossConfig(warmup_teacher_temp=0.04, teacher_temp=0.07,
                                                    warmup_teacher_temp_epochs=2),
                          epochs=5, iters_per_epoch=2, global_batch=256)
    with pytest.raises(ValueError, match="outside the teacher temperature schedule"):
        sch.teacher_temp_at(5)


def test_step_values_read_every_schedule_at_one_iteration():
    sch = Schedules.build(OptimConfig(), LossConfig(warmup_teacher_temp=0.04, teacher_temp=0.07,
                                                    warmup_teacher_temp_epochs=2),
                          epochs=5, iters_per_epoch=3, global_batch=256)
    at = sch.at(7)  # epoch 2, its second step
    assert (at.epoch, at.iteration) == (2, 7)
    assert (at.lr, at.wd, at.momentum) == (sch.lr[7], sch.wd[7], sch.momentum[7])
    assert at.teacher_temp == sch.teacher_temp[2] == 0.07
    assert sch.at(0).teacher_temp == 0.04
