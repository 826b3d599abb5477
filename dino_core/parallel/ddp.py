"""DDP, and one process: every rank holds the whole student, teacher and optimizer state.

The student is wrapped in ``DistributedDataParallel`` when there is more than one rank (one
process: no wrapper at all); the teacher is never wrapped (no gradients: each rank updates
its copy from the all-reduced student). Checkpoints are whole files written by rank 0
(``train.store.SingleFileStore``) and read whole by every rank; state dicts are the plain
modules'. Gradients are clipped per tensor with foreach kernels (``train.optim``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..formats.files import load_state
from ..train.optim import clip_per_part, clip_per_tensor
from ..train.store import SingleFileStore
from .env import DistEnv, barrier


def wrap_ddp(student: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """The student under DDP, with the options the training step allows.

    - ``gradient_as_bucket_view``: every ``.grad`` is a view into DDP's all-reduce bucket,
      so gradients are held once (not once in ``.grad`` and again in the buckets) and are
      not copied between the two; the step zeroes them in place rather than dropping them
      (``DDPStrategy.grads_to_none``), so the backward accumulates straight into the buckets.
    - ``static_graph``: the student's autograd graph is the same at every iteration. Every
      trainable parameter gets a gradient in every backward (the backbone runs once per
      resolution group, the head once on all features); the last-layer freeze of the first
      epochs drops that layer's gradient after the backward, after its all-reduce, so the
      graph and the set of used parameters do not change when the freeze ends (tested on
      gloo across the boundary, tests/dino_core/parallel/test_ddp_step.py). DDP then plans
      its buckets once from the first iteration.
    """
    return nn.parallel.DistributedDataParallel(
        student, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, static_graph=True)


@dataclass
class DDPStrategy:
    """The DDP strategy (``strategy.ParallelStrategy``); ``env`` says the ranks."""

    env: DistEnv = field(default_factory=DistEnv)
    name: str = "ddp"

    def wrap(self, student: nn.Module, teacher: nn.Module, device: torch.device
             ) -> tuple[nn.Module, nn.Module]:
        """BatchNorm layers become SyncBatchNorm across ranks (a no-op without any), both
        models move to ``device``, and the student goes into DDP across ranks."""
        if self.env.distributed:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        student, teacher = student.to(device), teacher.to(device)
        if self.env.distributed:
            student = wrap_ddp(student, device)
        return student, teacher

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def grads_to_none(self, student: nn.Module) -> bool:
        # With gradient_as_bucket_view the gradients are views into the all-reduce buckets:
        # zero them in place so the backward accumulates into the buckets; dropping them
        # (None) would make autograd allocate fresh ones and DDP copy them over.
        return not getattr(student, "gradient_as_bucket_view", False)

    def clip_grads(self, params: list[torch.Tensor], max_norm: float) -> None:
        clip_per_tensor(params, max_norm)

    def clip_grads_per_part(self, parts: list[list[torch.Tensor]], max_norm: float) -> None:
        clip_per_part(parts, max_norm)  # every rank holds the whole reduced gradients

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.unwrap(model).state_dict()

    def load_model_state(self, model: nn.Module, state: dict, what: str,
                         path: str | os.PathLike) -> None:
        load_state(self.unwrap(model), state, what, path)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                             state: dict) -> None:
        optimizer.load_state_dict(state)

    def checkpoint_store(self, out: Path) -> SingleFileStore:
        return SingleFileStore(Path(out), writer=self.env.is_main, barrier=self.barrier)

    def barrier(self) -> None:
        barrier()
