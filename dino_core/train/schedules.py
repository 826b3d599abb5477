"""Per-iteration schedules of the DINO recipe, precomputed once as arrays.

Indexing a host-side array with the host's iteration counter costs no device sync, so the
step reads its lr / weight decay / teacher momentum for free.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int,
                          epochs: int) -> np.ndarray:
    """Teacher temperature per epoch: linear warm-up, then constant."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs else np.array([])
    return np.concatenate((warm, np.full(max(epochs - warmup_epochs, 0), temp)))[:max(epochs, 1)]


@dataclass(frozen=True)
class Schedules:
    """lr, weight decay and teacher momentum for every iteration of the run."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray

    @classmethod
    def build(cls, optim, epochs: int, iters_per_epoch: int, global_batch: int) -> "Schedules":
        """``optim`` is an OptimConfig; lr scales linearly with the global batch (per 256)."""
        base_lr = optim.lr * global_batch / 256.0
        return cls(
            lr=cosine_schedule(base_lr, optim.min_lr, epochs, iters_per_epoch, optim.warmup_epochs),
            wd=cosine_schedule(optim.weight_decay, optim.weight_decay_end, epochs, iters_per_epoch),
            momentum=cosine_schedule(optim.momentum_teacher, 1.0, epochs, iters_per_epoch),
        )
