"""The losses: DINO's (reference pair loop, fused torch implementation, CUDA kernels, center
EMA) and DINOv2's other terms (Sinkhorn-Knopp centering, the iBOT patch loss, KoLeo).

``DINOLoss`` is what the DINO recipe uses; the DINOv2 recipe composes ``TeacherCentering``,
``fused_dino_loss``, ``ibot_patch_loss`` and ``koleo_loss``. The functions are exported for
tests and benchmarks.
"""
from .center import CenterEMA
from .centering import TeacherCentering
from .dino_loss import IMPLS, DINOLoss
from .fused import fused_dino_loss, teacher_probs
from .ibot import MaskedPositions, ibot_patch_loss
from .koleo import koleo_loss
from .patch_ce import fused_patch_ce, reference_patch_ce
from .reference import einsum_dino_loss, reference_dino_loss
from .sinkhorn import sinkhorn_knopp

__all__ = ["IMPLS", "CenterEMA", "DINOLoss", "MaskedPositions", "TeacherCentering",
           "einsum_dino_loss", "fused_dino_loss", "fused_patch_ce", "ibot_patch_loss",
           "koleo_loss", "reference_dino_loss", "reference_patch_ce", "sinkhorn_knopp",
           "teacher_probs"]
