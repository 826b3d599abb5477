"""Center EMA of the teacher logits, with its all-reduce overlapped with the backward pass.

    c <- m * c + (1 - m) * mean over (both global views, all ranks) of the raw teacher logits

The reference reduces synchronously inside the loss. Here ``launch`` sums the local teacher
rows (in float32; float64 for float64 logits) and, when torch.distributed is initialised,
starts the all-reduce with ``async_op=True``; ``apply`` finishes it and updates the center. The loss
calls ``apply`` right before the next use of the center (the next forward, a state dict, a
device move), so the collective overlaps the backward and the optimizer step, and the
center used by every forward is exactly the reference's. Without a process group the
update is applied at once, inside the same forward, as the reference does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .reference import accumulation_dtype


@dataclass
class _PendingUpdate:
    """A launched update: the row sum ``[1, K]`` (being all-reduced), rows in the mean."""

    row_sum: torch.Tensor
    rows: int
    work: object | None  # a torch.distributed Work handle, None when not distributed


class CenterEMA:
    """Momentum update of a ``[1, K]`` center buffer from teacher logits ``[2*B, K]``.

    Assumes every rank contributes the same number of rows (as the reference does: the mean
    divides the all-reduced sum by ``rows * world_size``).
    """

    def __init__(self, momentum: float):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self._pending: _PendingUpdate | None = None

    @property
    def pending(self) -> bool:
        """True while a launched update has not been applied to the center yet."""
        return self._pending is not None

    def launch(self, teacher_output: torch.Tensor, center: torch.Tensor) -> None:
        """Start the update from ``teacher_output [rows, K]``; applies it now if not distributed.

        A previous update that was never applied is applied first, so none is lost.
        """
        self.apply(center)
        acc = accumulation_dtype(teacher_output.dtype)
        row_sum = teacher_output.detach().sum(dim=0, keepdim=True, dtype=acc)
        rows, work = teacher_output.shape[0], None
        if dist.is_available() and dist.is_initialized():
            rows *= dist.get_world_size()
            work = dist.all_reduce(row_sum, op=dist.ReduceOp.SUM, async_op=True)
        self._pending = _PendingUpdate(row_sum, rows, work)
        if work is None:
            self.apply(center)

    def apply(self, center: torch.Tensor) -> None:
        """Finish a launched update (if any) and fold it into ``center [1, K]`` in place."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.work is not None:
            # With NCCL this orders the current CUDA stream after the collective; the host
            # does not wait. With gloo (CPU tensors) it waits for the reduction to finish.
            pending.work.wait()
        batch_mean = pending.row_sum.to(center.dtype) / pending.rows
        center.mul_(self.momentum).add_(batch_mean, alpha=1.0 - self.momentum)

    def discard(self) -> None:
        """Drop a launched update (e.g. when a checkpoint overwrites the center)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.work is not None:
            pending.work.wait()  # the collective must still complete on every rank


class PendingCenterHooks(nn.Module):
    """Base of a module whose ``center`` buffer a ``CenterEMA`` (``self._center_ema``) updates
    with a deferred all-reduce: a pending update is folded in before the state dict is saved
    or the module is moved or recast, and dropped when a state dict is loaded (the loaded
    center replaces it)."""

    center: torch.Tensor
    _center_ema: CenterEMA

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._center_ema.apply(self.center)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._center_ema.discard()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _apply(self, fn, *args, **kwargs):
        self._center_ema.apply(self.center)  # before .to()/.cuda()/.double()
        return super()._apply(fn, *args, **kwargs)
