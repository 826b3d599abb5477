"""The recipe interface: the part of a training method that is not the engine's.

The engine (``dino_core.train``) owns the mechanics every method shares: the loop, the step
(autocast, backward, clipping, last-layer freeze, optimizer, teacher EMA, statistics),
schedules, checkpoints, preemption; the parallel strategy (``dino_core.parallel``) owns how
the models are spread over ranks. A recipe owns the rest:

- what it builds: the student and its teacher (backbone and heads), from its own config
  section (``build_models``);
- what a step computes, in two halves so that a step may be split into micro-batches
  (gradient accumulation) and still equal one batch of their union:
  ``teacher_targets(micro_batches, teacher, at)``, without gradient, one target per
  micro-batch, normalised over the WHOLE step (a center used, Sinkhorn-Knopp over every
  micro-batch and rank); then per micro-batch ``student_losses(batch, student, target, at)``
  -> ``{name: scalar}`` (each a mean over that micro-batch), which the step sums, logs and
  back-propagates; then ``end_step(targets)``: state updates from the whole step's targets
  (a center's EMA), launched before the last backward so a collective overlaps it.
  ``losses`` is the composition for one batch (benchmarks, tests);
- what it keeps between steps (centers, queues): moved with ``to``, saved and restored as
  its own checkpoint entries (``state_dict`` / ``load_state_dict``), which it checks itself.

The teacher is the student's exponential moving average: the step updates every teacher
parameter from the student parameter of the same name, so the two must have the same
parameter names (``build_models`` returns them so).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from pipelines.batch import Batch

    from ..config import TrainConfig
    from ..train.schedules import StepValues, TeacherTempSettings


class Recipe(ABC):
    """A self-supervised method on the shared engine (see the module docstring)."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: "TrainConfig") -> "Recipe":
        """The recipe of a run: its own config section plus the shared ones it reads."""

    @property
    @abstractmethod
    def teacher_temp_settings(self) -> "TeacherTempSettings":
        """The config section the schedules read the teacher temperature from."""

    @abstractmethod
    def build_models(self, init_backbone: bool = True, img_size: int | None = None
                     ) -> tuple[nn.Module, nn.Module]:
        """(student, teacher) on the CPU, the teacher a gradient-free copy of the student
        with the same parameter names. ``init_backbone`` False: a resume, whose checkpoint
        supplies the weights. ``img_size``: the backbone's position grid in pixels (None:
        the recipe's default)."""

    @abstractmethod
    def teacher_targets(self, micro_batches: Sequence["Batch"], teacher: nn.Module,
                        at: "StepValues") -> list[Any]:
        """What the student learns from, per micro-batch of this step (called without
        gradient, under the step's autocast); anything normalised over a batch is
        normalised over all of ``micro_batches`` (and every rank). No host sync."""

    @abstractmethod
    def student_losses(self, batch: "Batch", student: nn.Module, target: Any,
                       at: "StepValues") -> dict[str, torch.Tensor]:
        """This micro-batch's loss terms (scalars, by name, each a mean over the
        micro-batch) against its ``target``; no host sync. The step back-propagates their
        sum, so the student's outputs may be consumed by a term (a loss that works in its
        input's storage) once it has been computed."""

    def end_step(self, targets: list[Any]) -> None:
        """State updates from the whole step's targets (e.g. a center's EMA); called once
        per step, after the last micro-batch's losses and before its backward."""

    def losses(self, batch: "Batch", student: nn.Module, teacher: nn.Module,
               at: "StepValues") -> dict[str, torch.Tensor]:
        """One whole batch's terms: targets, losses, state update (a step of one
        micro-batch; benchmarks and tests)."""
        with torch.no_grad():
            (target,) = self.teacher_targets([batch], teacher, at)
        terms = self.student_losses(batch, student, target, at)
        self.end_step([target])
        return terms

    def describe(self, device: torch.device, dtype: torch.dtype) -> str:
        """Which implementation of the losses runs for outputs of ``dtype`` on ``device``
        (benchmarks report it)."""
        return self.name

    def to(self, device: torch.device) -> "Recipe":
        """Move the recipe's state (centers, queues) to ``device``."""
        return self

    def state_dict(self) -> dict[str, object]:
        """The recipe's checkpoint entries (tensors and plain data only)."""
        return {}

    def load_state_dict(self, ckpt: dict, path: str | os.PathLike) -> None:
        """Restore the recipe's state from a checkpoint; a missing entry is one clear
        ``CheckpointError`` naming ``path``."""
