"""FSDP2: every rank holds a shard of each parameter of the student, the teacher and the
optimizer state, instead of the whole of them (DDP).

- Units: torch's ``fully_shard`` on a 1-D device mesh of every rank, one unit per
  transformer block (its parameters all-gathered just before it runs, freed after it, its
  gradients reduce-scattered in the backward) and one at the root for the rest (patch
  embedding, tokens, final norm, head). Parameters are DTensors sharded on dim 0, so
  parameters, gradients and the AdamW state per rank are about 1/world of DDP's
  (tests/dino_core/parallel/test_fsdp.py); the all-gathers cost about 1.5x DDP's
  traffic (all-gather forward and backward, reduce-scatter instead of all-reduce).
- Teacher: sharded the same way; its forward all-gathers block by block and reshards after
  each one, its root too (it has no backward to keep its parameters for). The EMA runs on
  the local shards (``local_shards``): a student parameter and its teacher twin have the
  same shape and placement, so each rank updates its shard of the teacher from its shard of
  the student, one foreach call, nothing gathered.
- Mixed precision (``precision=bf16``): a ``MixedPrecisionPolicy`` all-gathers parameters
  in bf16 for compute and reduce-scatters gradients in fp32; the shards (the optimizer's
  and the EMA's master weights) stay fp32. The step's autocast is the same as under DDP.
  fp32: no policy. fp16 is refused by the config (no sharded GradScaler here).
- Clipping per tensor, as the recipe clips: each gradient's norm is the root of the sum of
  its shards' squared norms: one foreach norm over the local shards, one all-reduce of the
  stacked squares, the coefficients applied by one foreach multiply; no host sync.
- Gradient accumulation: ``accumulating`` turns gradient sync off, so the micro-batches
  before the last accumulate unsharded local gradients (memory: one unsharded gradient of
  the model) and the last backward reduce-scatters their sum once.
- One process: fsdp runs in a one-rank process group of its own (``env.init_alone``), so
  the same code and the same sharded checkpoints serve 1 rank and many.
- Checkpoints: ``train.sharded_store.ShardedStore`` (every rank writes its shards through
  torch.distributed.checkpoint); model and optimizer state dicts are DTensor state dicts by
  the plain modules' names (``get_model_state_dict``), loaded in place at any world size.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..models.checkpointing import transformer_blocks
from .env import DistEnv, agree, barrier, gather_to_main


def mixed_precision(precision: str):
    """The FSDP policy of a (resolved) step precision: bf16 compute, fp32 reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "fp32":
        return MixedPrecisionPolicy()
    raise ValueError(f"precision {precision!r} is not offered with parallel=fsdp (bf16 or fp32)")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise): its storage, not a copy."""
    return t.to_local() if hasattr(t, "to_local") else t


@dataclass
class FSDPStrategy:
    """The FSDP2 strategy (``strategy.ParallelStrategy``); ``precision`` the resolved step
    precision (fp32 | bf16)."""

    env: DistEnv = field(default_factory=DistEnv)
    precision: str = "fp32"
    name: str = "fsdp"

    def wrap(self, student: nn.Module, teacher: nn.Module, device: torch.device
             ) -> tuple[nn.Module, nn.Module]:
        """Both models on ``device``, each block and the root a unit on a mesh of every
        rank (the module docstring); modules keep their names and classes' behaviour."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self.env.distributed:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        student, teacher = student.to(device), teacher.to(device)
        mesh = init_device_mesh(device.type, (self.env.world_size,))
        policy = mixed_precision(self.precision)
        for model, root_reshards in ((student, None), (teacher, True)):
            for block in transformer_blocks(model):
                fully_shard(block, mesh=mesh, mp_policy=policy)
            # None: FSDP keeps the root gathered from the forward to the backward (the
            # student); True: the teacher's root reshards after its forward, no backward
            fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=root_reshards)
        return student, teacher

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model  # fully_shard works in place: names and modules unchanged

    def grads_to_none(self, student: nn.Module) -> bool:
        return True

    def local_shards(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [local(t) for t in tensors]

    def accumulating(self, student: nn.Module):
        """Backwards inside keep their gradients unsharded and local (no reduce-scatter)."""
        @contextlib.contextmanager
        def no_sync():
            student.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                student.set_requires_gradient_sync(True)
        return no_sync()

    @torch.no_grad()
    def clip_grads(self, params: list[torch.Tensor], max_norm: float) -> None:
        grads = [local(p.grad) for p in params if p.grad is not None]
        if not grads:
            return
        # the squared norm of each gradient, summed over its shards on every rank
        squares = torch.stack(torch._foreach_norm(grads)).square_()
        if dist.is_initialized():
            dist.all_reduce(squares)  # no host wait: the device orders what reads it
        coefs = squares.sqrt_().add_(1e-6).reciprocal_().mul_(max_norm).clamp_max_(1.0)
        torch._foreach_mul_(grads, list(coefs.unbind()))

    @torch.no_grad()
    def clip_grads_per_part(self, parts: list[list[torch.Tensor]], max_norm: float) -> None:
        """DINOv2's clipping (``train.optim.clip_per_part``) over shards: each part's squared
        norm is the sum of its local shards' squared norms over every rank (one all-reduce
        for all parts), no host sync."""
        groups = [g for g in ([local(p.grad) for p in part if p.grad is not None]
                              for part in parts) if g]
        if not groups:
            return
        squares = torch.stack([torch.stack(torch._foreach_norm(g)).square().sum()
                               for g in groups])
        if dist.is_initialized():
            dist.all_reduce(squares)  # no host wait: the device orders what reads it
        coefs = squares.sqrt_().add_(1e-6).reciprocal_().mul_(max_norm).clamp_max_(1.0)
        for grads, coef in zip(groups, coefs.unbind()):
            torch._foreach_mul_(grads, coef)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(model)  # DTensors: each rank its shards, nothing gathered

    def load_model_state(self, model: nn.Module, state, what: str,
                         path: str | os.PathLike) -> None:
        """``state``: a ``ShardedEntry`` (a sharded checkpoint, any world size)."""
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                             set_model_state_dict)
        target = get_model_state_dict(model)
        _entry(state, path).load_into(target)
        set_model_state_dict(model, target)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                             state) -> None:
        """``state``: a ``ShardedEntry``. torch first creates the optimizer's state (a step
        at lr 0, which changes no parameter) for the shards to be loaded into; parameters
        the checkpoint has no state for (no step yet: the last layer while it is frozen)
        are left without, as in the run that wrote it (else AdamW's step count differs)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict,
                                                             set_optimizer_state_dict)
        entry = _entry(state, "the checkpoint")
        stored = {name.rsplit(".", 1)[0].removeprefix("state.") for name in entry.names()}
        target = {name: s for name, s in get_optimizer_state_dict(model, optimizer)["state"].items()
                  if name in stored}
        entry.load_into({"state": target})
        # not strict: the parameters left without state (the load replaces the whole state)
        set_optimizer_state_dict(model, optimizer, {"state": target,
                                                    "param_groups": entry.plain["param_groups"]},
                                 options=StateDictOptions(strict=False))

    def checkpoint_store(self, out: Path):
        from ..train.sharded_store import ShardedStore
        return ShardedStore(Path(out), self.env.rank, self.env.world_size, barrier=self.barrier,
                            agree=agree, gather=gather_to_main)

    def barrier(self) -> None:
        barrier()


def _entry(state, path):
    from ..formats.files import CheckpointError
    from ..train.sharded_store import ShardedEntry
    if not isinstance(state, ShardedEntry):
        raise CheckpointError(f"checkpoint {path} is not a sharded checkpoint; --parallel fsdp "
                              "resumes from sharded checkpoints only (checkpoint.dcp/)")
    return state
