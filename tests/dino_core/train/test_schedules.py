import math

import numpy as np

from dino_core.config import OptimConfig
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
    sch = Schedules.build(OptimConfig(warmup_epochs=0), epochs=4, iters_per_epoch=3, global_batch=512)
    assert math.isclose(sch.lr[0], 0.0005 * 2)
    assert math.isclose(sch.wd[0], 0.04) and sch.wd[-1] > 0.3
    assert math.isclose(sch.momentum[0], 0.996) and sch.momentum[-1] > 0.999


def test_teacher_temperature_warmup_then_constant():
    t = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert len(t) == 100 and t[0] == 0.04 and math.isclose(t[29], 0.07) and t[-1] == 0.07
    assert np.all(teacher_temp_schedule(0.04, 0.04, 0, 5) == 0.04)
