"""The iBOT patch loss on CUDA tensors: where its kernel will plug in.

No CUDA kernel for the patch loss is built yet: ``unavailable_reason`` says so, ``auto``
then runs the fused torch path (``patch_ce.fused_patch_ce``) on a GPU too, and
``patch_impl='cuda'`` is refused with that reason instead of failing on a missing symbol.
"""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here, or None when it can."""
    return "the kernel library has no patch-loss kernel yet (the fused torch path runs)"


def cuda_patch_ce(student: torch.Tensor, teacher_probs: torch.Tensor, weight: torch.Tensor,
                  student_temp: float) -> torch.Tensor:
    """The patch loss by the CUDA kernel (``patch_ce``'s contract)."""
    raise RuntimeError(f"impl='cuda': {unavailable_reason()}")
