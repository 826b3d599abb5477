"""The DINOv2 recipe's config section (``dinov2`` in the YAML) and its checks against the
shared sections; no torch import (the config check reads it).

Defaults are DINOv2's (``dinov2/configs/ssl_default_config.yaml`` of the official code):
loss weights dino 1.0, ibot 1.0, koleo 0.1; one head shared by the CLS and the masked patch
tokens (``ibot.separate_head: false``); student temperature 0.1; teacher temperature 0.04 ->
0.07 over 30 epochs; center momentum 0.9. Centering: that file says ``"centering"`` (the
EMA center), while the paper (section 4) and the official ViT-L/14 and ViT-g/14 training
configs use Sinkhorn-Knopp, which is the default here. Those configs also use a separate
iBOT head of 131072 prototypes (and a 384-wide bottleneck for both heads):
``separate_ibot_head: true``, ``ibot_out_dim: 131072``.

The mask numbers live in the augmentation spec (``data.aug.masking``: one spec for every
executor); the DINO head's sizes in ``model`` (``out_dim``, ``head_hidden_dim``,
``head_bottleneck_dim``, ``norm_last_layer``: DINOv2's head trains its weight-norm scale,
i.e. ``norm_last_layer: false``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.config_io import ConfigError

if TYPE_CHECKING:
    from ..config import TrainConfig

CENTERINGS = ("sinkhorn_knopp", "ema")
PATCH_IMPLS = ("auto", "reference", "fused", "cuda")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"training config field 'dinov2.{name}': {msg}")


@dataclass(frozen=True)
class DINOv2Config:
    """The DINOv2 recipe's own settings (see the module docstring)."""

    dino_weight: float = 1.0        # the image-level (CLS) cross-entropy
    ibot_weight: float = 1.0        # the masked patch cross-entropy (needs data.aug.masking)
    koleo_weight: float = 0.1       # KoLeo on the student's global CLS tokens, per global crop
    centering: str = "sinkhorn_knopp"  # sinkhorn_knopp | ema (see the module docstring)
    sinkhorn_iterations: int = 3
    center_momentum: float = 0.9    # ema centering only
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    separate_ibot_head: bool = False  # False: the DINO head also projects the patch tokens
    ibot_out_dim: int = 65536       # a separate iBOT head's prototypes, and its sizes:
    ibot_head_hidden_dim: int = 2048
    ibot_head_bottleneck_dim: int = 256
    patch_impl: str = "auto"        # the patch loss: auto | reference | fused | cuda

    def __post_init__(self) -> None:
        for name in ("dino_weight", "ibot_weight", "koleo_weight"):
            _check(getattr(self, name) >= 0, name, "must be >= 0 (0 drops the term)")
        _check(self.dino_weight + self.ibot_weight > 0, "dino_weight",
               "the dino and ibot weights cannot both be 0")
        _check(self.centering in CENTERINGS, "centering",
               f"must be one of {', '.join(CENTERINGS)}, got {self.centering!r}")
        _check(self.sinkhorn_iterations >= 1, "sinkhorn_iterations", "must be >= 1")
        _check(0 <= self.center_momentum <= 1, "center_momentum", "must be in [0, 1]")
        _check(self.student_temp > 0 and self.teacher_temp > 0
               and self.warmup_teacher_temp > 0, "teacher_temp", "temperatures must be > 0")
        _check(self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs",
               "must be >= 0")
        _check(self.ibot_out_dim >= 2, "ibot_out_dim", "must be >= 2")
        _check(self.ibot_head_hidden_dim >= 1 and self.ibot_head_bottleneck_dim >= 1,
               "ibot_head_hidden_dim", "head sizes must be >= 1")
        _check(self.patch_impl in PATCH_IMPLS, "patch_impl",
               f"must be one of {', '.join(PATCH_IMPLS)}, got {self.patch_impl!r}")

    @property
    def patch_out_dim(self) -> int | None:
        """Prototypes of the patch logits: None when the DINO head makes them."""
        return self.ibot_out_dim if self.separate_ibot_head else None


def check_dinov2(cfg: "TrainConfig") -> None:
    """What the DINOv2 recipe needs from the shared sections; one ConfigError naming the
    field."""
    d, aug = cfg.dinov2, cfg.data.aug
    if d.ibot_weight > 0:
        if aug.masking is None:
            raise ConfigError("training config field 'data.aug.masking': the dinov2 recipe's "
                              "iBOT term needs masks (set data.aug.masking, e.g. "
                              f"{{patch_size: {cfg.model.patch_size}}}, or "
                              "dinov2.ibot_weight=0)")
        if aug.masking.patch_size != cfg.model.patch_size:
            raise ConfigError(f"training config field 'data.aug.masking.patch_size': "
                              f"{aug.masking.patch_size} differs from model.patch_size "
                              f"{cfg.model.patch_size}")
    if d.dino_weight == 0 and d.separate_ibot_head:
        raise ConfigError("training config field 'dinov2.dino_weight': 0 with a separate iBOT "
                          "head leaves the DINO head without a gradient")
    if cfg.model.use_bn_in_head:
        raise ConfigError("training config field 'model.use_bn_in_head': the dinov2 recipe's "
                          "head sees CLS and patch tokens in one batch: no BatchNorm")
    if d.warmup_teacher_temp_epochs > cfg.epochs:
        raise ConfigError(f"training config field 'dinov2.warmup_teacher_temp_epochs': "
                          f"{d.warmup_teacher_temp_epochs} is more than epochs={cfg.epochs}")
