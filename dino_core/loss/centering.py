"""Teacher probabilities from raw teacher logits, normalised over a whole step (DINOv2).

Two modes (DINOv2's ``train.centering``):

- ``"ema"`` (DINOv2's "centering", its default config): ``softmax((t - c) / tau)`` with a
  center ``c [1, K]`` that moves once per step, ``c <- m c + (1 - m) mean``, the mean taken
  over the step's rows on each rank and then over ranks (``CenterEMA``, its all-reduce
  overlapped with the backward). For the image-level term every rank has the same rows, so
  this is the mean over all rows, as DINO's center; for masked patch tokens (a different
  count on each rank) it is DINOv2's mean of the ranks' means.
- ``"sinkhorn_knopp"`` (DINOv2's ViT-L/14 and ViT-g/14 runs): ``sinkhorn.sinkhorn_knopp``
  over every row of the step and every rank; no state.

One object per term (the CLS tokens', the masked patch tokens'); its center is a buffer (in
its ``state_dict`` in both modes, zeros with Sinkhorn-Knopp, so checkpoints have one
layout).
"""
from __future__ import annotations

from typing import Sequence

import torch
from .center import CenterEMA, PendingCenterHooks
from .reference import accumulation_dtype
from .sinkhorn import ITERATIONS, sinkhorn_knopp

MODES = ("sinkhorn_knopp", "ema")


class TeacherCentering(PendingCenterHooks):
    """Teacher probabilities for one loss term; see the module docstring.

    Buffers: ``center [1, out_dim]`` (float32).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, mode: str = "sinkhorn_knopp", center_momentum: float = 0.9,
                 iterations: int = ITERATIONS):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"centering mode must be one of {MODES}, got {mode!r}")
        self.out_dim, self.mode, self.iterations = out_dim, mode, iterations
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._center_ema = CenterEMA(center_momentum)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, mode={self.mode!r}"

    @torch.no_grad()
    def probabilities(self, teacher_logits: Sequence[torch.Tensor], teacher_temp: float
                      ) -> list[torch.Tensor]:
        """``[R_i, K]`` probabilities (accumulation dtype) for each ``[R_i, K]`` tensor of
        raw logits of this step (one per micro-batch), normalised over all of them."""
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.iterations)
        self._center_ema.apply(self.center)  # a pending all-reduce lands before its use
        out = []
        for t in teacher_logits:
            acc = accumulation_dtype(t.dtype)
            with torch.autocast(t.device.type, enabled=False):
                centered = (t.detach().to(acc) - self.center.to(acc)).div_(teacher_temp)
                out.append(torch.softmax(centered, dim=-1, out=centered))
        return out

    @torch.no_grad()
    def update(self, teacher_logits: Sequence[torch.Tensor]) -> None:
        """Launch the center's EMA step from this step's raw logits (``"ema"``; nothing for
        Sinkhorn-Knopp): this rank's mean row over all of them, averaged over ranks when
        applied. A rank without rows contributes zeros."""
        if self.mode != "ema":
            return
        rows = torch.cat([t.detach() for t in teacher_logits])
        acc = accumulation_dtype(rows.dtype)
        mean = rows.sum(dim=0, keepdim=True, dtype=acc) / max(rows.shape[0], 1)   # [1, K]
        self._center_ema.launch(mean, self.center)

    def sync(self) -> None:
        """Fold a pending (distributed) center update into ``center`` now."""
        self._center_ema.apply(self.center)
