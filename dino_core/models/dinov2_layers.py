"""The two layers DINOv2 (Oquab et al. 2023, arXiv 2304.07193) adds to the DINO ViT block.

- ``LayerScale``: a learned per-channel scale ``gamma`` [D] on a residual branch (CaiT,
  Touvron et al. 2021), initialised to a small constant (DINOv2 trains with 1e-5) so that
  every block starts close to the identity. Key: ``ls1.gamma`` / ``ls2.gamma``.
- ``SwiGLUFFN``: the gated feed-forward of DINOv2's ViT-g/14 (``ffn_layer: swiglufused``):
  ``w3(silu(x W1^T + b1) * (x W2^T + b2))`` with W1 and W2 stored as one fused linear
  ``w12`` (first half of its output rows: W1, the gated half; second half: W2), the
  official checkpoint's keys ``mlp.w12.{weight,bias}`` [2H, D], [2H] and
  ``mlp.w3.{weight,bias}`` [D, H], [D]. The hidden width H keeps the parameter count of a
  GELU MLP of width ``hidden``: ``H = ceil8(int(hidden * 2 / 3))`` (4096 for ViT-g's
  1536 * 4 = 6144).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerScale(nn.Module):
    """``x * gamma`` with ``gamma`` [D] initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def swiglu_hidden(hidden: int) -> int:
    """DINOv2's SwiGLU width for a GELU MLP width ``hidden``: 2/3 of it, rounded up to 8."""
    return (int(hidden * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """Gated FFN (B, N, D) -> (B, N, D); ``hidden`` is the GELU MLP's width (D * mlp_ratio)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        width = swiglu_hidden(hidden)
        self.w12 = nn.Linear(dim, 2 * width)
        self.w3 = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)  # each (B, N, H)
        return self.w3(F.silu(gate) * value)
