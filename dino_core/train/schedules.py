"""The run's schedules, precomputed once: lr, weight decay, teacher momentum per iteration and
the teacher temperature per epoch.

Indexing a host-side array with the host's iteration counter costs no device sync, so a step
reads its values for free: ``Schedules.at(iteration)`` gives them as one ``StepValues``,
which the step and the recipe's losses read. The teacher temperature is decided here and
only here: the loss takes it from the caller, and the loop logs the same value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base``, then a cosine from ``base`` to ``final``.

    Returns ``epochs * iters_per_epoch`` values (float64).
    """
    total = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, total)
    warmup = np.linspace(warmup_start, base, warm, endpoint=False) if warm else np.array([])
    steps = np.arange(total - warm)
    denom = max(len(steps), 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / denom))
    out = np.concatenate((warmup, cosine))
    assert len(out) == total
    return out


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float,
                          warmup_teacher_temp_epochs: int, nepochs: int) -> tuple[float, ...]:
    """tau_t per epoch: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the
    warm-up epochs (both ends included, as the reference), then constant. Length nepochs."""
    if nepochs < 1:
        raise ValueError(f"nepochs must be >= 1, got {nepochs}")
    if not 0 <= warmup_teacher_temp_epochs <= nepochs:
        raise ValueError(f"warmup_teacher_temp_epochs must be in [0, nepochs={nepochs}], "
                         f"got {warmup_teacher_temp_epochs}")
    if warmup_teacher_temp <= 0 or teacher_temp <= 0:
        raise ValueError(f"teacher temperatures must be > 0, got {warmup_teacher_temp} "
                         f"and {teacher_temp}")
    warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
    steady = np.full(nepochs - warmup_teacher_temp_epochs, teacher_temp)
    return tuple(float(t) for t in np.concatenate((warmup, steady)))


class TeacherTempSettings(Protocol):
    """A recipe's config section with a teacher temperature (``LossConfig`` for DINO)."""

    warmup_teacher_temp: float
    teacher_temp: float
    warmup_teacher_temp_epochs: int


@dataclass(frozen=True)
class StepValues:
    """What the schedules say for one step (host floats: reading them costs no sync)."""

    epoch: int
    iteration: int        # global, 0-based: epoch * iters_per_epoch + batch
    lr: float
    wd: float
    momentum: float       # teacher EMA momentum
    teacher_temp: float   # tau_t of this epoch


@dataclass(frozen=True)
class Schedules:
    """lr, weight decay and teacher momentum for every iteration, tau_t for every epoch."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: tuple[float, ...]
    iters_per_epoch: int

    @classmethod
    def build(cls, optim, temps: TeacherTempSettings, epochs: int, iters_per_epoch: int,
              global_batch: int) -> "Schedules":
        """``optim`` is an OptimConfig, ``temps`` the recipe's teacher temperature settings;
        lr scales with the global batch as ``optim.lr_scaling`` says: linearly per 256 (DINO)
        or with the square root per 1024 (DINOv2's ``sqrt_wrt_1024``)."""
        if optim.lr_scaling == "sqrt":
            base_lr = optim.lr * math.sqrt(global_batch / 1024.0)
        else:
            base_lr = optim.lr * global_batch / 256.0
        return cls(
            lr=cosine_schedule(base_lr, optim.min_lr, epochs, iters_per_epoch, optim.warmup_epochs),
            wd=cosine_schedule(optim.weight_decay, optim.weight_decay_end, epochs, iters_per_epoch),
            momentum=cosine_schedule(optim.momentum_teacher, 1.0, epochs, iters_per_epoch),
            teacher_temp=teacher_temp_schedule(temps.warmup_teacher_temp, temps.teacher_temp,
                                               temps.warmup_teacher_temp_epochs, epochs),
            iters_per_epoch=iters_per_epoch,
        )

    def teacher_temp_at(self, epoch: int) -> float:
        """tau_t of ``epoch`` (0-based)."""
        if not 0 <= epoch < len(self.teacher_temp):
            raise ValueError(f"epoch {epoch} is outside the teacher temperature schedule "
                             f"(nepochs={len(self.teacher_temp)})")
        return self.teacher_temp[epoch]

    def at(self, iteration: int) -> StepValues:
        """The values of global iteration ``iteration``."""
        epoch = iteration // self.iters_per_epoch
        return StepValues(epoch, iteration, float(self.lr[iteration]), float(self.wd[iteration]),
                          float(self.momentum[iteration]), self.teacher_temp_at(epoch))
