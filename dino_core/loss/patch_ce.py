"""Weighted softmax cross-entropy over prototypes per token: the math of the iBOT patch loss.

For M tokens (DINOv2: the masked patch tokens of the step's global crops) with student
logits ``s [M, K]``, teacher probabilities ``q [M, K]`` (no gradient), per-token weights
``w [M]`` and ``x_i = s_i / tau``:

    L        = -sum_i w_i <q_i, log_softmax(x_i)>  = sum_i w_i (m_i lse(x_i) - <q_i, x_i>)
    dL/ds_i  = w_i (m_i softmax(x_i) - q_i) / tau,          m_i = sum_k q_i[k] (1, or ~1)

The iBOT weighting is the caller's (``ibot.py``: ``w_i = 1 / (masked patches of token i's
crop * global crops)``, DINOv2's per-image mean then mean over images).

Implementations, all with the same value and gradient:
- ``reference_patch_ce``: the formula in plain autograd (``log_softmax``, product, sums):
  the obviously-correct twin, which keeps a ``[M, K]`` log-softmax and product.
- ``fused_patch_ce``: the closed form. The forward works on row chunks of at most
  ``CHUNK_ELEMENTS`` in one reused buffer (``x``, its log-sum-exp, then ``<q, x>`` in place)
  and saves only its inputs; the backward writes ``softmax(x)`` chunk by chunk and turns it
  into the gradient in place (directly in the gradient for float32/float64 logits; through
  the chunk buffer, rounded once, for bfloat16/float16). Memory: the gradient plus one
  chunk, nothing else of size ``[M, K]``.
- ``patch_cuda``: the CUDA kernel of the kernel library (``csrc/patch_ce_kernel.cu``, one
  block per row, the gradient written in the forward or, for float16, in the backward);
  ``auto`` runs it on CUDA tensors when the library loads and exports it, else the fused path.
Accumulation in float32 (float64 for float64 logits); ``q`` and ``w`` in that dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import accumulation_dtype

# Rows per forward/backward chunk: about this many elements (32 MiB of float32).
CHUNK_ELEMENTS = 1 << 23


def check_inputs(student: torch.Tensor, teacher_probs: torch.Tensor,
                 weight: torch.Tensor) -> None:
    """Shapes and devices only: no host sync."""
    if student.dim() != 2 or teacher_probs.shape != student.shape:
        raise ValueError(f"student logits and teacher probabilities must both be [M, K], got "
                         f"{tuple(student.shape)} and {tuple(teacher_probs.shape)}")
    if weight.shape != (student.shape[0],):
        raise ValueError(f"weights must be [M] = [{student.shape[0]}], got "
                         f"{tuple(weight.shape)}")
    if len({student.device, teacher_probs.device, weight.device}) != 1:
        raise ValueError(f"student on {student.device}, teacher probabilities on "
                         f"{teacher_probs.device}, weights on {weight.device}")


def reference_patch_ce(student: torch.Tensor, teacher_probs: torch.Tensor,
                       weight: torch.Tensor, student_temp: float) -> torch.Tensor:
    """``-sum_i w_i <q_i, log_softmax(s_i / tau)>`` in plain autograd, in the accumulation
    dtype; a 0-dim tensor."""
    check_inputs(student, teacher_probs, weight)
    acc = accumulation_dtype(student.dtype)
    log_p = F.log_softmax(student.to(acc) / student_temp, dim=-1)
    per_token = -(teacher_probs.detach().to(acc) * log_p).sum(dim=-1)          # [M]
    return (weight.detach().to(acc) * per_token).sum()


def _chunks(rows: int, dim: int) -> range:
    step = max(1, CHUNK_ELEMENTS // max(dim, 1))
    return range(0, rows, step)


class FusedPatchCEFunction(torch.autograd.Function):
    """``(student [M, K], q [M, K], w [M], student_temp) -> loss`` with the closed-form
    backward (see the module docstring); the logits are left alone."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, w: torch.Tensor,
                student_temp: float) -> torch.Tensor:
        acc = q.dtype
        rows, dim = student.shape
        total = torch.zeros((), dtype=acc, device=student.device)
        step = max(1, CHUNK_ELEMENTS // max(dim, 1))
        buffer = q.new_empty(min(step, rows), dim)                     # reused per chunk
        for r0 in _chunks(rows, dim):
            r1 = min(r0 + step, rows)
            x = buffer[:r1 - r0]
            x.copy_(student[r0:r1]).mul_(1.0 / student_temp)            # x = s / tau
            lse = torch.logsumexp(x, dim=-1)                            # [c]
            mass = q[r0:r1].sum(dim=-1)                                 # [c]
            dot = x.mul_(q[r0:r1]).sum(dim=-1)                          # <q, x>, in place
            total += (w[r0:r1] * (mass * lse - dot)).sum()
        ctx.save_for_backward(student, q, w)
        ctx.student_temp = student_temp
        return total

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        student, q, w = ctx.saved_tensors
        acc = q.dtype
        rows, dim = student.shape
        inv_tau = 1.0 / ctx.student_temp
        scale = w * (grad_loss.to(acc) * inv_tau)                       # [M], on the device
        mass_scale = (q.sum(dim=-1) * scale).unsqueeze(-1)              # [M, 1]
        grad = torch.empty_like(student)
        step = max(1, CHUNK_ELEMENTS // max(dim, 1))
        in_place = student.dtype == acc
        buffer = None if in_place else q.new_empty(min(step, rows), dim)
        for r0 in _chunks(rows, dim):
            r1 = min(r0 + step, rows)
            p = grad[r0:r1] if in_place else buffer[:r1 - r0]
            p.copy_(student[r0:r1]).mul_(inv_tau)
            torch.softmax(p, dim=-1, out=p)             # in place: each row read, then written
            p.mul_(mass_scale[r0:r1]).addcmul_(q[r0:r1], scale[r0:r1].unsqueeze(-1), value=-1)
            if not in_place:
                grad[r0:r1].copy_(p)                    # bf16/fp16: rounded once
        return grad, None, None, None


def fused_patch_ce(student: torch.Tensor, teacher_probs: torch.Tensor, weight: torch.Tensor,
                   student_temp: float) -> torch.Tensor:
    """The weighted patch cross-entropy by the closed form (see the module docstring); a
    0-dim tensor in the accumulation dtype, the gradient to ``student`` only."""
    check_inputs(student, teacher_probs, weight)
    acc = accumulation_dtype(student.dtype)
    with torch.autocast(student.device.type, enabled=False):
        return FusedPatchCEFunction.apply(student.contiguous(),
                                          teacher_probs.detach().to(acc).contiguous(),
                                          weight.detach().to(acc).contiguous(), student_temp)
