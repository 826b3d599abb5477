"""The DINO loss: reference pair loop, fused torch implementation, CUDA kernels, center EMA.

``DINOLoss`` is what the trainer uses; the functions are exported for tests and benchmarks.
"""
from .center import CenterEMA
from .dino_loss import IMPLS, DINOLoss
from .fused import fused_dino_loss, teacher_probs
from .reference import einsum_dino_loss, reference_dino_loss

__all__ = ["IMPLS", "CenterEMA", "DINOLoss", "einsum_dino_loss", "fused_dino_loss",
           "reference_dino_loss", "teacher_probs"]
