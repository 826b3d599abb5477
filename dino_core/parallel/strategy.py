"""The parallel strategy: how a run's models live on its ranks, and what follows from that.

Everything the engine does that depends on how the student and teacher are spread over the
ranks goes through one object, called on every rank:

- ``wrap`` / ``unwrap``: the models as the step runs them (DDP: the student inside its
  DDP wrapper) and as plain modules (parameter names, EMA pairs, freeze);
- ``grads_to_none``: whether zeroing may drop the gradients (DDP's bucket views may not);
- ``clip_grads``: per-tensor gradient clipping over the gradients as the strategy holds them;
- ``model_state`` / ``load_model_state`` and ``optimizer_state`` / ``load_optimizer_state``:
  state dicts for a checkpoint, with the plain modules' names;
- ``checkpoint_store``: where checkpoints are written and read (``train.store``).

DDP (``ddp.py``, which is also the single-process case) is the first strategy; a sharded
one (FSDP2 with torch.distributed.checkpoint) is another implementation of this protocol.
``build_strategy`` joins the process group (``env.init_distributed``) and builds the one
named.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from .env import DistEnv, init_distributed

if TYPE_CHECKING:
    from ..train.store import CheckpointStore

STRATEGIES = ("ddp",)


class ParallelStrategy(Protocol):
    """See the module docstring; every method is called on every rank."""

    name: str
    env: DistEnv

    def wrap(self, student: nn.Module, teacher: nn.Module, device: torch.device
             ) -> tuple[nn.Module, nn.Module]:
        """(student, teacher) on ``device``, as the step runs them."""

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside what ``wrap`` returned."""

    def grads_to_none(self, student: nn.Module) -> bool:
        """Whether ``zero_grad`` may drop the wrapped student's gradients."""

    def clip_grads(self, params: list[torch.Tensor], max_norm: float) -> None:
        """Scale each gradient whose norm exceeds ``max_norm`` down to it; no host sync."""

    def clip_grads_per_part(self, parts: list[list[torch.Tensor]], max_norm: float) -> None:
        """Scale each part's gradients so that their joint norm (over every rank's share) is
        at most ``max_norm`` (DINOv2's clipping, ``train.optim.clip_per_part``); no host
        sync."""

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict of the plain module, for a checkpoint."""

    def load_model_state(self, model: nn.Module, state: dict, what: str,
                         path: str | os.PathLike) -> None:
        """Load ``state`` strictly; a mismatch is one ``CheckpointError`` naming ``path``."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        """The optimizer's state dict, for a checkpoint."""

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                             state: dict) -> None:
        """Restore the optimizer from ``state``."""

    def checkpoint_store(self, out: Path) -> "CheckpointStore":
        """The store of the run whose output folder is ``out``."""

    def barrier(self) -> None:
        """Wait for every rank."""


def build_strategy(name: str, device_kind: str) -> ParallelStrategy:
    """Join the process group of this launch (if any) and build strategy ``name``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {name!r}; choose from "
                         f"{', '.join(STRATEGIES)}")
    from .ddp import DDPStrategy
    return DDPStrategy(init_distributed(device_kind))
