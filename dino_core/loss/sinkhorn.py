"""Sinkhorn-Knopp teacher centering (DINOv2, Oquab et al. 2023, section 4; SwAV's algorithm,
Caron et al. 2020), over a whole step: every micro-batch and every rank.

The paper's statement, with the teacher logits ``t [R, K]`` of all R rows of the step (all
ranks) and ``Q = exp(t / tau)^T`` (prototypes by rows):

    Q <- Q / sum(Q)
    repeat n times:  Q <- Q / (K * row sums of Q)          (each prototype's total: 1/K)
                     Q <- Q / (R * column sums of Q)       (each sample's total: 1/R)
    return (R * Q)^T                                        (each sample's row sums to 1)

Every normalisation divides by a positive factor per prototype, per sample or overall, and
the next normalisation over the other axis is blind to a constant factor, so the constants
``sum(Q)``, ``K`` and ``R`` cancel: the result is ``n`` alternations of "divide each
prototype's column by its sum over all rows of all ranks" and "divide each row by its sum",
which is what ``sinkhorn_knopp`` computes (float64 in, float64 out; float32 otherwise). It
also subtracts each prototype's largest logit over all rows and ranks before the
exponential, a per-prototype factor that the first normalisation removes: no overflow for
any temperature, and every prototype column keeps an entry exp(0) = 1, so no sum is zero.

Distributed: the per-prototype maxima and sums are all-reduced across the process group
(two collectives of K numbers per iteration, plus one for the maxima); the row sums are
local. So 2 ranks give exactly the single-process result on their concatenated rows (up to
the summation order). The collectives run on the current stream (NCCL) with no host sync.
The tests hold this against the paper's algorithm in float64 (tests/dino_core/loss).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .reference import accumulation_dtype

ITERATIONS = 3  # DINOv2's


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Sequence[torch.Tensor], teacher_temp: float,
                   iterations: int = ITERATIONS) -> list[torch.Tensor]:
    """Teacher probabilities ``[R_i, K]`` (rows summing to 1) for each ``[R_i, K]`` tensor of
    raw teacher logits (one per micro-batch; any R_i, 0 included), normalised jointly over
    all of them and every rank (see the module docstring)."""
    if not teacher_logits:
        raise ValueError("sinkhorn_knopp needs at least one tensor of teacher logits")
    if not teacher_temp > 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    first = teacher_logits[0]
    acc = accumulation_dtype(first.dtype)
    sizes = [t.shape[0] for t in teacher_logits]
    with torch.autocast(first.device.type, enabled=False):
        q = torch.cat([t.detach().to(acc) for t in teacher_logits]).div_(teacher_temp)
        peak = (q.amax(dim=0) if q.shape[0] else
                q.new_full(q.shape[1:], float("-inf")))                        # [K]
        if _distributed():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        q.sub_(peak).exp_()                                                      # [R, K]
        for _ in range(iterations):
            column = q.sum(dim=0)                      # [K]: each prototype over local rows
            if _distributed():
                dist.all_reduce(column)                # ... over every rank's rows
            q.div_(column)
            q.div_(q.sum(dim=1, keepdim=True))         # each row sums to 1
    return list(q.split(sizes))
