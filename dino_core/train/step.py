"""One training step of a recipe, with its phases named and no host synchronisation inside it.

    fetch     (the caller) the batch on the device
    targets   the recipe's teacher side without grad (``Recipe.teacher_targets``; DINO: the
              teacher forward on the global views)
    losses    the recipe's student side under autocast (``Recipe.student_losses``; DINO:
              student forward on every view, the DINO loss over all view pairs), summed
    state     the recipe's updates from the whole step (``Recipe.end_step``; DINO: center
              EMA launched, its all-reduce overlapping the backward)
    backward  (GradScaler-scaled in fp16)
    clip      per-tensor clipping with foreach norms (the parallel strategy's)
    freeze    drop the last layer's gradient during the first epochs (DINO; DINOv2's
              ``clip_mode`` per_part and ``freeze_mode`` zero_lr: ``train/optim.py``)
    optimizer AdamW (fused on CUDA)
    ema       teacher <- m teacher + (1 - m) student, one foreach call

The step is the mechanics every recipe shares; what is computed is the recipe's, how the
models are spread over ranks the strategy's (``dino_core.parallel``). It never calls
``.item()``: the loss terms, their running sums and the first non-finite step stay on the
device, and the training loop reads them only on logging steps (``StepStats.read``, the one
host sync). A non-finite loss is caught there, before any checkpoint is written.

CUDA-graph capture of the whole step is not offered (yet): it needs a capturable optimizer
with lr/wd held in device tensors, a static-address input batch (the loaders would copy into
it), and the DDP + async center all-reduce inside the graph; and a speedup claim needs a GPU
measurement this project has not made. With ViT-S/16 at batch 64 the step is dominated by
large matmuls, where launch overhead (what graphs remove) is a small share.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..parallel.ddp import DDPStrategy
from .ema import ema_update, paired_params
from .optim import CLIP_MODES, apply_last_layer_freeze, clip_parts, set_hyperparams

if TYPE_CHECKING:
    from pipelines.batch import Batch

    from ..parallel.strategy import ParallelStrategy
    from ..recipes.base import Recipe
    from .schedules import StepValues


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of a recipe's loss terms (the one term itself when there is one)."""
    if not terms:
        raise ValueError("a recipe's losses() returned no loss term")
    values = iter(terms.values())
    total = next(values)
    for term in values:
        total = total + term
    return total


@dataclass(frozen=True)
class StatsReading:
    """What ``StepStats.read`` returns: means since the last read, by name (``loss`` the
    total, ``loss_<term>`` each term), the last step's total, and the first non-finite
    iteration (-1: none)."""

    means: dict[str, float]
    last_loss: float
    first_bad: int


class StepStats:
    """Device-side accumulators of the step (the total loss, then each term); read on
    logging steps only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: tuple[str, ...] = ()
        self.sums = torch.zeros(1, device=device, dtype=torch.float64)  # [1 + terms]
        self.count = 0
        self.last = torch.zeros(1, device=device)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)

    def record(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], iteration: int) -> None:
        names = tuple(terms)
        if names != self.names:  # the first step (a recipe returns the same terms each step)
            self.names = names
            self.sums = torch.zeros(1 + len(names), device=self.device, dtype=torch.float64)
        values = torch.stack([t.detach().float() for t in (loss, *terms.values())])
        bad = ~torch.isfinite(values[0])
        self.first_bad = torch.where(bad & (self.first_bad < 0),
                                     torch.full_like(self.first_bad, iteration), self.first_bad)
        self.sums += values.double()
        self.last = values
        self.count += 1

    def read(self) -> StatsReading:
        """The means since the last read (which it resets), the last loss, the first bad step."""
        # Host sync: one transfer of a few scalars, only on logging steps / epoch ends.
        vals = torch.cat([self.sums.float(), self.last[:1],
                          self.first_bad.float().reshape(1)]).tolist()
        n = max(self.count, 1)
        means = {"loss": vals[0] / n}
        means.update({f"loss_{name}": v / n for name, v in zip(self.names, vals[1:])})
        self.sums.zero_()
        self.count = 0
        return StatsReading(means, vals[-2], int(vals[-1]))


@dataclass
class TrainStep:
    """Callable step of ``recipe`` over a student (as the strategy wrapped it) and its EMA
    teacher."""

    recipe: "Recipe"
    student: nn.Module                 # maybe wrapped by the strategy (DDP)
    teacher: nn.Module                 # no grad
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str = "fp32"            # fp32 | bf16 | fp16
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    clip_mode: str = "per_tensor"      # per_tensor (DINO) | per_part (DINOv2; train/optim.py)
    freeze_mode: str = "drop_grad"     # drop_grad (DINO) | zero_lr (DINOv2; train/optim.py)
    scaler: torch.amp.GradScaler | None = None
    strategy: "ParallelStrategy" = field(default_factory=DDPStrategy)  # default: one process

    def __post_init__(self) -> None:
        self.bare_student = self.strategy.unwrap(self.student)
        self.student_params, self.teacher_params = paired_params(
            self.bare_student, self.strategy.unwrap(self.teacher))
        self.trainable = [p for p in self.bare_student.parameters() if p.requires_grad]
        self.stats = StepStats(self.device)
        self.grads_to_none = self.strategy.grads_to_none(self.student)
        if self.precision == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)
        # DINOv2's clipping: one norm per part of the student (backbone, each head)
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"unknown clip mode {self.clip_mode!r}; choose from "
                             f"{', '.join(CLIP_MODES)}")
        self.clip_parts = clip_parts(self.bare_student) if self.clip_mode == "per_part" else None

    def __call__(self, batch: "Batch", at: "StepValues") -> torch.Tensor:
        """Run one step on ``batch`` with this step's schedule values ``at``; returns the
        total loss (device)."""
        set_hyperparams(self.optimizer, at.lr, at.wd)
        with autocast_context(self.precision, self.device):
            # targets: the teacher's side, no grad (DINO: the teacher on the 2 globals)
            with torch.no_grad():
                (target,) = self.recipe.teacher_targets([batch], self.teacher, at)
            # losses: the student's side (DINO: every view, the loss over the pairs); the
            # student outputs are dead after it
            terms = self.recipe.student_losses(batch, self.student, target, at)
            loss = total_loss(terms)
        # state: updates from the whole step (DINO: the center EMA, its all-reduce launched)
        self.recipe.end_step([target])
        self.stats.record(loss, terms, at.iteration)

        # backward
        self.optimizer.zero_grad(set_to_none=self.grads_to_none)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        # clip
        if self.clip_grad > 0 and self.clip_parts is not None:
            self.strategy.clip_grads_per_part(self.clip_parts, self.clip_grad)
        elif self.clip_grad > 0:
            self.strategy.clip_grads(self.trainable, self.clip_grad)
        # freeze
        if at.epoch < self.freeze_last_layer:
            apply_last_layer_freeze(self.bare_student, self.optimizer, self.freeze_mode)
        # optimizer
        if self.scaler is not None:
            # Fused AdamW consumes the scaler's found_inf on the device; the unfused path of
            # GradScaler.step syncs once to decide whether to skip the update.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # ema
        ema_update(self.student_params, self.teacher_params, at.momentum)
        return loss.detach()
