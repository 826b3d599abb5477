"""One DINO training step, with its phases named and no host synchronisation inside it.

    fetch     (the caller) views on the device
    teacher   teacher forward on the global views, no grad
    student   student forward on every view (one backbone pass per resolution)
    loss      DINO loss over all (teacher, student) view pairs; center EMA launched
    backward  (GradScaler-scaled in fp16)
    clip      per-tensor clipping with foreach norms
    freeze    drop the last layer's gradient during the first epochs
    optimizer AdamW (fused on CUDA)
    ema       teacher <- m teacher + (1 - m) student, one foreach call

The step never calls ``.item()``: the loss, a running sum and the first non-finite step stay
on the device, and the training loop reads them only on logging steps (``StepStats.read``,
the one host sync). A non-finite loss is caught there, before any checkpoint is written.

CUDA-graph capture of the whole step is not offered (yet): it needs a capturable optimizer
with lr/wd held in device tensors, a static-address input batch (the loaders would copy into
it), and the DDP + async center all-reduce inside the graph; and a speedup claim needs a GPU
measurement this project has not made. With ViT-S/16 at batch 64 the step is dominated by
large matmuls, where launch overhead (what graphs remove) is a small share.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .ema import ema_update
from .optim import clip_per_tensor, drop_last_layer_grad, set_hyperparams


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


class StepStats:
    """Device-side accumulators of the step; read on logging steps only."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0
        self.last_loss = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)

    def record(self, loss: torch.Tensor, iteration: int) -> None:
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0),
                                     torch.full_like(self.first_bad, iteration), self.first_bad)
        self.loss_sum += loss.double()
        self.last_loss = loss
        self.count += 1

    def read(self) -> tuple[float, float, int]:
        """(mean loss since last read, last loss, first non-finite iteration or -1)."""
        # Host sync: one transfer of three scalars, only on logging steps / epoch ends.
        vals = torch.stack([self.loss_sum.float(), self.last_loss, self.first_bad.float()]).tolist()
        mean = vals[0] / max(self.count, 1)
        self.loss_sum.zero_()
        self.count = 0
        return mean, vals[1], int(vals[2])


@dataclass
class DINOStep:
    """Callable step over a (possibly DDP-wrapped) student and its EMA teacher."""

    student: nn.Module                 # MultiCropWrapper, maybe inside DDP
    teacher: nn.Module                 # MultiCropWrapper, never wrapped, no grad
    loss_fn: nn.Module                 # dino_core.loss.DINOLoss
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str = "fp32"            # fp32 | bf16 | fp16
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        from .ema import paired_params
        bare = getattr(self.student, "module", self.student)
        self.student_params, self.teacher_params = paired_params(bare, self.teacher)
        self.trainable = [p for p in bare.parameters() if p.requires_grad]
        self.stats = StepStats(self.device)
        # Under DDP with gradient_as_bucket_view the gradients are views into the all-reduce
        # buckets: zero them in place so the backward accumulates into the buckets; dropping
        # them (None) would make autograd allocate fresh ones and DDP copy them over.
        self.grads_to_none = not getattr(self.student, "gradient_as_bucket_view", False)
        if self.precision == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def __call__(self, views: list[torch.Tensor], epoch: int, iteration: int, lr: float,
                 wd: float, momentum: float) -> torch.Tensor:
        """Run one step on ``views`` (2 globals first, then locals); returns the loss (device)."""
        set_hyperparams(self.optimizer, lr, wd)
        with autocast_context(self.precision, self.device):
            # teacher: only the 2 global views, no grad
            with torch.no_grad():
                teacher_out = self.teacher(views[:2])          # (2B, K)
            # student: all views
            student_out = self.student(views)                   # (V*B, K)
            # loss (+ center EMA of the teacher outputs, no host sync). student_out is dead
            # after this: with loss overwrite_logits the loss works in it (the softmax from
            # its forward, the gradient from its backward), so nothing below may read it.
            loss = self.loss_fn(student_out, teacher_out, epoch)
        self.stats.record(loss, iteration)

        # backward
        self.optimizer.zero_grad(set_to_none=self.grads_to_none)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        # clip
        if self.clip_grad > 0:
            clip_per_tensor(self.trainable, self.clip_grad)
        # freeze
        if epoch < self.freeze_last_layer:
            drop_last_layer_grad(getattr(self.student, "module", self.student))
        # optimizer
        if self.scaler is not None:
            # Fused AdamW consumes the scaler's found_inf on the device; the unfused path of
            # GradScaler.step syncs once to decide whether to skip the update.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # ema
        ema_update(self.student_params, self.teacher_params, momentum)
        return loss.detach()
