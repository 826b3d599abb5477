"""The iBOT patch loss as DINOv2 weights it (Zhou et al. 2022; Oquab et al. 2023, section 4).

The teacher sees the unmasked global crops, the student the masked ones; at every masked
patch of a crop, the cross-entropy between the teacher's prototype probabilities and the
student's. DINOv2 averages it over each crop's masked patches, then over the crops of the
batch, ALL ``G = num_global * B`` of them (an unmasked crop counts, with zero):

    L_ibot = 1/G sum_g 1/|M_g| sum_{n in M_g} -<q_{g,n}, log_softmax(s_{g,n} / tau)>

(``ibot_patch_loss.forward_masked``: each masked token weighted by ``1 / |M_g|``, the sum
divided by ``student_masks_flat.shape[0]``; the meta-architecture's ``loss_scales = 2`` and
``ibot_loss_scale = 1 / 2`` cancel). So per token ``w = 1 / (|M_g| G)`` and the loss is
``patch_ce``'s weighted cross-entropy. ``MaskedPositions`` derives the masked tokens and
their weights from ``Batch.masks`` on the host (no device sync).

Implementations (``impl``): ``reference`` (plain autograd), ``fused`` (closed form, plain
torch), ``cuda`` (the kernel library's patch-loss kernel, ``patch_cuda``), ``auto`` (``cuda``
for CUDA tensors of a kernel dtype when the library loads and exports that kernel, else
``fused``); one log line per implementation says which runs and why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .patch_ce import fused_patch_ce, reference_patch_ce

log = logging.getLogger(__name__)

IMPLS = ("reference", "fused", "cuda", "auto")


@dataclass(frozen=True)
class MaskedPositions:
    """The masked patch tokens of a micro-batch's global crops.

    ``index [M]`` int64: flat positions in the crops' patch tokens flattened crop-major (row
    ``g * N + n``: crop g, patch n in row-major grid order); ``weight [M]`` float64 (the
    loss casts it to its accumulation dtype): ``1 / (masked patches of the token's crop *
    crops)``; ``crops``: G (masked or not).
    """

    index: torch.Tensor
    weight: torch.Tensor
    crops: int

    @classmethod
    def from_masks(cls, masks: torch.Tensor, device: torch.device | str = "cpu"
                   ) -> "MaskedPositions":
        """From bool masks ``[G, rows, cols]`` (or ``[G, N]``) ON THE CPU, computed on the
        host and copied to ``device`` (pinned, non-blocking: no host sync)."""
        if masks.dtype != torch.bool or masks.device.type != "cpu" or masks.dim() < 2:
            raise ValueError(f"masks must be a bool CPU tensor [G, ...], got {masks.dtype} "
                             f"{tuple(masks.shape)} on {masks.device}")
        flat = masks.reshape(masks.shape[0], -1)
        per_crop = flat.sum(dim=1)                                       # [G]
        index = flat.reshape(-1).nonzero().squeeze(1)                   # host: CPU tensors
        weight = 1.0 / (per_crop.clamp(min=1) * flat.shape[0]).double()
        weight = weight.repeat_interleave(per_crop)
        device = torch.device(device)
        if device.type == "cuda":
            index, weight = index.pin_memory(), weight.pin_memory()
        return cls(index.to(device, non_blocking=True), weight.to(device, non_blocking=True),
                   int(flat.shape[0]))


def resolve_impl(impl: str, student: torch.Tensor, announced: set[str]) -> str:
    """The implementation that runs for these logits (``auto`` resolved); logged once per
    ``announced`` set."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl in ("reference", "fused"):
        return _announce(impl, f"impl={impl!r}", announced)
    if impl == "auto" and not student.is_cuda:
        return _announce("fused", f"auto: tensors on {student.device}", announced)
    from . import patch_cuda
    if impl == "cuda":
        reason = patch_cuda.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"impl='cuda': the CUDA kernels are unavailable: {reason}")
        return _announce("cuda", "impl='cuda'", announced)
    if student.dtype not in patch_cuda.SUPPORTED_DTYPES:
        return _announce("fused", f"auto: {student.dtype} is not a kernel dtype", announced)
    reason = patch_cuda.unavailable_reason()
    if reason is not None:
        return _announce("fused", f"auto: CUDA kernels unavailable: {reason}", announced)
    return _announce("cuda", "auto: CUDA tensors and the kernel library", announced)


def _announce(impl: str, why: str, announced: set[str]) -> str:
    if impl not in announced:
        announced.add(impl)
        log.info("iBOT patch loss: using the %s implementation (%s)", impl, why)
    return impl


def ibot_patch_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                    positions: MaskedPositions, student_temp: float, impl: str = "fused",
                    announced: set[str] | None = None) -> torch.Tensor:
    """``L_ibot`` of the masked tokens' student logits ``[M, K]`` against the teacher's
    probabilities ``[M, K]`` at the same tokens (rows in ``positions.index`` order); a 0-dim
    tensor in the accumulation dtype."""
    which = resolve_impl(impl, student_logits, set() if announced is None else announced)
    if which == "reference":
        return reference_patch_ce(student_logits, teacher_probs, positions.weight,
                                  student_temp)
    if which == "fused":
        return fused_patch_ce(student_logits, teacher_probs, positions.weight, student_temp)
    from .patch_cuda import cuda_patch_ce
    return cuda_patch_ce(student_logits, teacher_probs, positions.weight, student_temp)
