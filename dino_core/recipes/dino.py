"""The DINO recipe (Caron et al. 2021, arXiv 2104.14294): self-distillation with no labels.

Models: a ViT backbone and a DINO head inside a ``MultiCropWrapper`` (one backbone pass per
crop resolution, one head pass on all crops), for the student (with drop path) and the
teacher (without); both backbones may start from a backbone file (``init_backbone``).
A step: the teacher sees the 2 global views, the student every view; one term, ``dino``:
the cross-entropy of ``dino_core.loss.DINOLoss`` between every (teacher global, other
student view) pair, at this epoch's teacher temperature (from the schedules). State: the
teacher center ``[1, K]``, saved as the checkpoint entry ``dino_loss: {"center": ...}``.
Config: ``model`` (backbone and head) and ``loss`` (this recipe's section).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import torch
from torch import nn

from ..config import LossConfig, ModelConfig
from ..formats.files import CheckpointError
from ..loss import DINOLoss
from ..models import DINOHead, MultiCropWrapper, build_vit
from .base import Recipe

W = TypeVar("W", bound=nn.Module)  # a recipe's student/teacher wrapper

if TYPE_CHECKING:
    from pipelines.batch import Batch

    from ..config import TrainConfig
    from ..train.schedules import StepValues


def build_models(model: ModelConfig, init_backbone: str | None = None,
                 img_size: int | None = None) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with drop path) and teacher (without), the teacher a copy of the student;
    both backbones from the file ``init_backbone`` when given (the head stays fresh).

    The one place a DINO student and teacher are put together: the trainer and the
    benchmarks both build them here. ``img_size``: the position grid in pixels (None:
    ``model.img_size``, whose 0 means 224 rounded down to a multiple of the patch size). The
    backbone takes every option of ``model`` (``ModelConfig.vit_options``).
    """
    m = model
    options = {**m.vit_options(), **({} if img_size is None else {"img_size": img_size})}

    def make(drop_path: float) -> MultiCropWrapper:
        backbone = build_vit(m.arch, m.patch_size, drop_path_rate=drop_path, **options)
        head = DINOHead(backbone.embed_dim, m.out_dim, use_bn=m.use_bn_in_head,
                        norm_last_layer=m.norm_last_layer, hidden_dim=m.head_hidden_dim,
                        bottleneck_dim=m.head_bottleneck_dim)
        return MultiCropWrapper(backbone, head)

    return student_and_teacher(make, m, init_backbone)


def student_and_teacher(make: Callable[[float], W], model: ModelConfig,
                        init_backbone: str | None) -> tuple[W, W]:
    """``make(drop_path)`` twice: the student with ``model.drop_path_rate``, the teacher
    without, its gradient-free copy; the student's backbone from the file ``init_backbone``
    when given (heads stay fresh); both backbones compiled when ``model.compile``. Every
    recipe's wrappers have a ``backbone``."""
    student, teacher = make(model.drop_path_rate), make(0.0)
    if init_backbone:  # a start from released weights: the head is fresh
        from ..train.init_backbone import load_init_backbone, read_init_backbone
        state = read_init_backbone(init_backbone, model.arch, model.patch_size)
        load_init_backbone(student.backbone, state, init_backbone)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    if model.compile:
        compile_backbones(student, teacher)
    return student, teacher


def compile_backbones(*wrappers: nn.Module) -> None:
    """``torch.compile`` each wrapper's backbone in place (``nn.Module.compile``: parameter
    names and checkpoints unchanged), with static shapes: the global and local crop sizes
    each get their own graph (a dynamic-shape graph would be slower for two fixed sizes)."""
    for w in wrappers:
        w.backbone.compile(dynamic=False)


class DINORecipe(Recipe):
    """DINO on the shared engine; ``loss`` holds the center (see the module docstring)."""

    name = "dino"

    def __init__(self, loss: DINOLoss, model: ModelConfig | None = None,
                 settings: LossConfig | None = None, init_backbone: str | None = None):
        self.loss = loss
        self.model = model if model is not None else ModelConfig()
        self.settings = settings if settings is not None else LossConfig()
        self.init_backbone = init_backbone

    @classmethod
    def from_config(cls, cfg: "TrainConfig") -> "DINORecipe":
        """``overwrite_logits`` is safe here: the step never reads the student logits after
        the loss call (``losses`` hands them to the loss and drops them)."""
        c = cfg.loss
        loss = DINOLoss(cfg.model.out_dim, cfg.data.aug.num_views, student_temp=c.student_temp,
                        center_momentum=c.center_momentum, impl=c.impl,
                        overwrite_logits=c.overwrite_logits)
        return cls(loss, cfg.model, c, cfg.init_backbone)

    @property
    def teacher_temp_settings(self) -> LossConfig:
        return self.settings

    def build_models(self, init_backbone: bool = True, img_size: int | None = None
                     ) -> tuple[MultiCropWrapper, MultiCropWrapper]:
        return build_models(self.model, self.init_backbone if init_backbone else None,
                            img_size)

    def teacher_targets(self, micro_batches: Sequence["Batch"], teacher: nn.Module,
                        at: "StepValues") -> list[torch.Tensor]:
        """The teacher's raw logits on each micro-batch's 2 global views, ``(2B, K)`` each:
        the loss centers and sharpens them itself, with the center of this step."""
        return [teacher(b.views[:2]) for b in micro_batches]

    def student_losses(self, batch: "Batch", student: nn.Module, target: torch.Tensor,
                       at: "StepValues") -> dict[str, torch.Tensor]:
        student_out = student(batch.views)          # (V*B, K): every view
        # student_out is dead after this: with loss overwrite_logits the loss works in it
        # (the softmax from its forward, the gradient from its backward), so nothing may
        # read it afterwards. The center moves once per step, in end_step.
        return {"dino": self.loss(student_out, target, at.teacher_temp, update_center=False)}

    def end_step(self, targets: list[torch.Tensor]) -> None:
        """The center EMA from every micro-batch's teacher logits, no host sync; its
        all-reduce overlaps the backward."""
        self.loss.update_center_from(targets)

    def describe(self, device: torch.device, dtype: torch.dtype) -> str:
        probe = torch.zeros(1, self.loss.out_dim, device=device, dtype=dtype)
        return f"DINOLoss {self.loss.resolve_impl(probe)}"

    def to(self, device: torch.device) -> "DINORecipe":
        self.loss.to(device)
        return self

    def state_dict(self) -> dict[str, object]:
        self.loss.sync_center()  # fold a pending center all-reduce in before saving
        return {"dino_loss": {"center": self.loss.center.detach().cpu()}}

    def load_state_dict(self, ckpt: dict, path: str | os.PathLike) -> None:
        entry = ckpt.get("dino_loss")
        if not isinstance(entry, dict) or "center" not in entry:
            raise CheckpointError(
                f"checkpoint {path} is not a dino-train checkpoint of the dino recipe (no "
                "dino_loss center); resume with the recipe that wrote it")
        self.loss.load_state_dict({"center": entry["center"]})
