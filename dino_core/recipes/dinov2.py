"""The DINOv2 recipe (Oquab et al. 2023, arXiv 2304.07193) on the shared engine.

Models (``build_models``): student and teacher are ``DINOv2Wrapper``s: a ViT with a mask
token, the DINO head, and the iBOT head when it is separate (``dinov2.separate_ibot_head``).
A step, over the batch's 2 global crops, its local crops and its masks (``Batch.masks``, from
the spec's ``masking``; ``MaskedPositions`` on the host):

- teacher (no grad): the unmasked global crops; its CLS logits ``[2B, K]`` and its patch
  logits at the masked positions ``[M, K']`` become probabilities, normalised over the WHOLE
  step (every micro-batch, every rank): Sinkhorn-Knopp or the EMA center
  (``TeacherCentering``, one per term), at this epoch's teacher temperature;
- student: the masked global crops and the local crops; three terms, each logged on its own
  (``loss_dino``, ``loss_ibot``, ``loss_koleo``), each times its weight:
  ``dino``  DINO's pair cross-entropy (teacher global t, student view v != t), mean over pairs
            (DINOv2's global and local terms together are exactly this mean);
  ``ibot``  the masked patch cross-entropy, per-crop mean then over all global crops
            (``dino_core.loss.ibot``);
  ``koleo`` KoLeo on the student's global CLS tokens (before the head), one term per global
            crop, summed (DINOv2: ``sum(koleo(p) for p in cls.chunk(2))``);
- end of step: the EMA centers move from every micro-batch's raw teacher logits.

State: the two centers, saved as the checkpoint entry ``dinov2: {"cls_center": [1, K],
"patch_center": [1, K']}`` (zeros with Sinkhorn-Knopp). Config: ``model`` (backbone, DINO
head), ``dinov2`` (this recipe), ``data.aug.masking`` (the masks).

The image-level term runs the fused torch loss on the teacher probabilities (the CUDA kernel
of the DINO recipe takes a center, not probabilities); the patch term ``dinov2.patch_impl``
(the CUDA kernel on a GPU with the kernel library).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..formats.files import CheckpointError
from ..loss import MaskedPositions, TeacherCentering, fused_dino_loss, ibot_patch_loss, koleo_loss
from ..models import DINOHead, build_vit
from ..models.dinov2_wrapper import GLOBAL_CROPS, DINOv2Wrapper
from .base import Recipe
from .dino import student_and_teacher
from .dinov2_config import DINOv2Config

if TYPE_CHECKING:
    from pipelines.batch import Batch

    from ..config import TrainConfig
    from ..train.schedules import StepValues


def build_models(model: ModelConfig, settings: DINOv2Config, init_backbone: str | None = None,
                 img_size: int | None = None) -> tuple[DINOv2Wrapper, DINOv2Wrapper]:
    """Student (with drop path) and teacher (without), the teacher a gradient-free copy; the
    backbones take every option of ``model`` (``ModelConfig.vit_options``: LayerScale,
    registers, SwiGLU ...) and, when the iBOT term is on, a mask token; from the file
    ``init_backbone`` when given (heads fresh; a file without a mask token keeps the fresh
    one). The iBOT head exists only when the iBOT term does and is separate.
    ``img_size``: the position grid in pixels (None: ``model.img_size``)."""
    ibot = settings.ibot_weight > 0
    options = {**model.vit_options(), **({} if img_size is None else {"img_size": img_size})}

    def make(drop_path: float) -> DINOv2Wrapper:
        backbone = build_vit(model.arch, model.patch_size, drop_path_rate=drop_path,
                             mask_token=ibot, **options)
        head = DINOHead(backbone.embed_dim, model.out_dim, use_bn=False,
                        norm_last_layer=model.norm_last_layer, hidden_dim=model.head_hidden_dim,
                        bottleneck_dim=model.head_bottleneck_dim)
        ibot_head = None
        if ibot and settings.separate_ibot_head:
            ibot_head = DINOHead(backbone.embed_dim, settings.ibot_out_dim, use_bn=False,
                                 norm_last_layer=model.norm_last_layer,
                                 hidden_dim=settings.ibot_head_hidden_dim,
                                 bottleneck_dim=settings.ibot_head_bottleneck_dim)
        return DINOv2Wrapper(backbone, head, ibot_head)

    return student_and_teacher(make, model, init_backbone)


@dataclass
class DINOv2Target:
    """What the student of one micro-batch learns from (``teacher_targets``)."""

    cls_probs: torch.Tensor            # [2, B, K] teacher probabilities per global view
    cls_logits: torch.Tensor           # [2B, K] raw, for the EMA center
    patch_probs: torch.Tensor | None   # [M, K'] at the masked positions
    patch_logits: torch.Tensor | None  # [M, K'] raw
    positions: MaskedPositions | None
    masks: torch.Tensor | None         # [2B, gh, gw] on the device


class DINOv2Recipe(Recipe):
    """DINOv2 on the shared engine (see the module docstring)."""

    name = "dinov2"

    def __init__(self, model: ModelConfig, settings: DINOv2Config,
                 init_backbone: str | None = None):
        self.model, self.settings, self.init_backbone = model, settings, init_backbone
        s = settings
        self.cls_centering = TeacherCentering(model.out_dim, s.centering, s.center_momentum,
                                              s.sinkhorn_iterations)
        self.patch_centering = TeacherCentering(s.patch_out_dim or model.out_dim, s.centering,
                                                s.center_momentum, s.sinkhorn_iterations)
        self._announced: set[str] = set()

    @classmethod
    def from_config(cls, cfg: "TrainConfig") -> "DINOv2Recipe":
        return cls(cfg.model, cfg.dinov2, cfg.init_backbone)

    @property
    def teacher_temp_settings(self) -> DINOv2Config:
        return self.settings

    def build_models(self, init_backbone: bool = True, img_size: int | None = None
                     ) -> tuple[DINOv2Wrapper, DINOv2Wrapper]:
        return build_models(self.model, self.settings,
                            self.init_backbone if init_backbone else None, img_size)

    @property
    def uses_masks(self) -> bool:
        return self.settings.ibot_weight > 0

    def _positions(self, batch: "Batch", device: torch.device
                   ) -> tuple[MaskedPositions | None, torch.Tensor | None]:
        """The batch's masked positions and its masks on ``device`` (no host sync: the masks
        are on the CPU; pinned, non-blocking copies)."""
        if not self.uses_masks:
            return None, None
        if batch.masks is None:
            raise ValueError("the dinov2 recipe's iBOT term needs Batch.masks: the loader's "
                             "spec has no masking section (data.aug.masking)")
        masks = batch.masks.pin_memory() if device.type == "cuda" else batch.masks
        return (MaskedPositions.from_masks(batch.masks, device),
                masks.to(device, non_blocking=True))

    def teacher_targets(self, micro_batches: Sequence["Batch"], teacher: nn.Module,
                        at: "StepValues") -> list[DINOv2Target]:
        """The teacher on each micro-batch's unmasked global crops; probabilities normalised
        over all micro-batches (and ranks) at this epoch's teacher temperature."""
        outs, places = [], []
        for b in micro_batches:
            positions, masks = self._positions(b, b.views[0].device)
            places.append((positions, masks))
            index = None if positions is None else positions.index
            outs.append(teacher(b.views[:GLOBAL_CROPS], mask_index=index))
        temp = at.teacher_temp
        cls_probs = self.cls_centering.probabilities([o.cls_logits for o in outs], temp)
        patch_probs: list[torch.Tensor | None] = [None] * len(outs)
        if self.uses_masks:
            patch_probs = self.patch_centering.probabilities(
                [o.patch_logits for o in outs], temp)
        return [DINOv2Target(cp.view(GLOBAL_CROPS, -1, cp.shape[-1]), o.cls_logits, pp,
                             o.patch_logits, pos, m)
                for cp, pp, o, (pos, m) in zip(cls_probs, patch_probs, outs, places)]

    def student_losses(self, batch: "Batch", student: nn.Module, target: DINOv2Target,
                       at: "StepValues") -> dict[str, torch.Tensor]:
        s = self.settings
        index = None if target.positions is None else target.positions.index
        out = student(batch.views, masks=target.masks, mask_index=index)
        terms = {}
        if s.dino_weight > 0:
            terms["dino"] = s.dino_weight * fused_dino_loss(
                out.cls_logits, target.cls_probs, len(batch.views), s.student_temp)
        if s.ibot_weight > 0:
            terms["ibot"] = s.ibot_weight * ibot_patch_loss(
                out.patch_logits, target.patch_probs, target.positions, s.student_temp,
                s.patch_impl, self._announced)
        if s.koleo_weight > 0:
            per_crop = out.global_cls.chunk(GLOBAL_CROPS)
            terms["koleo"] = s.koleo_weight * sum(koleo_loss(c) for c in per_crop)
        return terms

    def end_step(self, targets: list[DINOv2Target]) -> None:
        """The EMA centers from every micro-batch's raw teacher logits (nothing with
        Sinkhorn-Knopp); their all-reduces overlap the backward."""
        self.cls_centering.update([t.cls_logits for t in targets])
        if self.uses_masks:
            self.patch_centering.update([t.patch_logits for t in targets])

    def describe(self, device: torch.device, dtype: torch.dtype) -> str:
        from ..loss.ibot import resolve_impl
        probe = torch.zeros(1, 1, device=device, dtype=dtype)
        patch = resolve_impl(self.settings.patch_impl, probe, set()) if self.uses_masks \
            else "off"
        return (f"DINOv2 ({self.settings.centering}): dino fused, ibot {patch}, koleo "
                f"{'on' if self.settings.koleo_weight > 0 else 'off'}")

    def to(self, device: torch.device) -> "DINOv2Recipe":
        self.cls_centering.to(device)
        self.patch_centering.to(device)
        return self

    def state_dict(self) -> dict[str, object]:
        return {"dinov2": {"cls_center": self.cls_centering.state_dict()["center"].cpu(),
                           "patch_center": self.patch_centering.state_dict()["center"].cpu()}}

    def load_state_dict(self, ckpt: dict, path: str | os.PathLike) -> None:
        entry = ckpt.get("dinov2")
        if not isinstance(entry, dict) or not {"cls_center", "patch_center"} <= entry.keys():
            raise CheckpointError(
                f"checkpoint {path} is not a dino-train checkpoint of the dinov2 recipe (no "
                "dinov2 centers); resume with the recipe that wrote it")
        self.cls_centering.load_state_dict({"center": entry["cls_center"]})
        self.patch_centering.load_state_dict({"center": entry["patch_center"]})
