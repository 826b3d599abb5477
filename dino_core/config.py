"""The typed configuration of a DINO run: YAML in, dotted overrides on the command line.

Defaults are the reference recipe (Caron et al. 2021) for ViT-S/16 on ImageNet. The resolved
config is saved as ``config.yaml`` next to the checkpoints and inside every checkpoint (plain
data), so a run can always be rebuilt from its output directory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.config_io import (ConfigError, apply_overrides, deep_merge, from_plain, to_plain,
                                 yaml_problem)
from pipelines.loader import BACKENDS
from pipelines.spec import AugmentationSpec, SpecError

from .recipes.dinov2_config import DINOv2Config, check_dinov2

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"training config field '{name}': {msg}")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vit_small"
    patch_size: int = 16
    out_dim: int = 65536          # K, prototypes of the DINO head
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # freeze weight_g of the last layer at 1 (more stable)
    drop_path_rate: float = 0.1   # student only; the teacher has none
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    # torch.compile the student's and teacher's backbones (one static graph per crop size).
    # Opt-in until a GPU measurement (dino-bench step --compile) shows it pays for its
    # compile time; state_dict keys are unchanged.
    compile: bool = False


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None       # None: the embedded default dataset (its train split)
    backend: str = "reference"    # reference | dali | ffcv
    batch_size: int = 64          # per rank
    num_workers: int = 4
    aug: AugmentationSpec = field(default_factory=AugmentationSpec)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.0005            # at a global batch of 256; scaled linearly
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0        # per parameter tensor; 0 disables
    freeze_last_layer: int = 1    # epochs during which the last layer's gradient is dropped
    momentum_teacher: float = 0.996
    optimizer: str = "adamw"      # adamw (torch, fused on CUDA) | apex (apex FusedAdam if installed)


@dataclass(frozen=True)
class LossConfig:
    """The DINO recipe's section (``loss`` in the YAML, kept from before recipes existed):
    its loss, and the teacher temperature schedule (``train.schedules``)."""

    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04    # 0.07 in the paper's best runs; lower it if training collapses
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    impl: str = "auto"            # auto | reference | fused | cuda
    # fused/cuda work in the student logits (no [views*B, K] buffer of their own; fused
    # runs one softmax instead of two): safe in this trainer, whose step never reads the
    # logits after the loss call; other autograd users of the logits fail loudly (version
    # counter). No effect on reference.
    overwrite_logits: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    # Mid-epoch checkpoints: at the first step boundary after this many minutes since the
    # last checkpoint (0: at epoch ends only). Each holds the data position and every RNG
    # state; a resume continues inside the epoch exactly (see dino_core/train/store.py).
    every_minutes: float = 0.0
    # The same every N steps (0: off). For tests and debugging; minutes are the user knob.
    every_steps: int = 0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # The method (dino_core.recipes): what is built, computed per step and kept. Each reads
    # its own section (dino: loss; dinov2: dinov2) besides model, data, optim.
    recipe: str = "dino"
    dinov2: DINOv2Config = field(default_factory=DINOv2Config)
    epochs: int = 100
    output_dir: str = "runs/dino"
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    precision: str = "auto"       # auto: bf16 on CUDA, fp32 on CPU
    log_every: int = 10           # iterations between logged scalars (the only host syncs)
    saveckp_freq: int = 0         # also keep checkpointNNNN.pth every N epochs (0: never)
    max_iters_per_epoch: int = 0  # cap on iterations per epoch (0: the whole epoch)
    knn_eval: bool = True         # weighted k-NN on the val split at the end, when there is one
    progress: bool = True         # console progress bar
    # Start student and teacher backbones from this backbone file (released weights or
    # dino-export output); the head starts fresh and schedules start at zero. Ignored when
    # output_dir holds a checkpoint to resume from.
    init_backbone: str | None = None

    def __post_init__(self) -> None:
        from .models import ARCHS
        from .recipes import RECIPES
        _check(self.recipe in RECIPES, "recipe",
               f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        _check(self.model.arch in ARCHS, "model.arch",
               f"unknown architecture {self.model.arch!r}; choose from {', '.join(ARCHS)}")
        _check(self.model.patch_size >= 1, "model.patch_size", "must be >= 1")
        _check(self.model.out_dim >= 2, "model.out_dim", "must be >= 2")
        _check(0 <= self.model.drop_path_rate < 1, "model.drop_path_rate", "must be in [0, 1)")
        _check(self.data.backend in BACKENDS, "data.backend",
               f"must be one of {', '.join(BACKENDS)}, got {self.data.backend!r}")
        _check(self.data.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.data.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.data.aug.num_global == 2, "data.aug.global_views",
               "DINO's teacher needs exactly 2 global views")
        _check(self.optim.lr > 0 and self.optim.min_lr >= 0, "optim.lr", "must be > 0")
        _check(self.optim.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(0 <= self.optim.momentum_teacher <= 1, "optim.momentum_teacher", "must be in [0, 1]")
        _check(self.optim.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables)")
        _check(self.optim.optimizer in ("adamw", "apex"), "optim.optimizer",
               f"must be adamw or apex, got {self.optim.optimizer!r}")
        _check(self.loss.impl in ("auto", "reference", "fused", "cuda"), "loss.impl",
               f"must be auto, reference, fused or cuda, got {self.loss.impl!r}")
        _check(self.loss.teacher_temp > 0 and self.loss.student_temp > 0, "loss.teacher_temp",
               "temperatures must be > 0")
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        _check(self.log_every >= 1, "log_every", "must be >= 1")
        _check(self.checkpoint.every_minutes >= 0, "checkpoint.every_minutes",
               "must be >= 0 (0: checkpoints at epoch ends only)")
        _check(self.checkpoint.every_steps >= 0, "checkpoint.every_steps",
               "must be >= 0 (0: off)")
        _check(self.saveckp_freq >= 0, "saveckp_freq", "must be >= 0 (0: never)")
        if self.recipe == "dinov2":
            check_dinov2(self)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        try:
            return from_plain(cls, data, "training config")
        except SpecError as e:  # nested augmentation spec errors: prefix the path
            raise ConfigError(f"training config data.aug: {e}") from None

    def save_yaml(self, path: str | Path) -> None:
        from pipelines.files import atomic_write_bytes
        atomic_write_bytes(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key.sub=value`` overrides."""
    data = TrainConfig().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(e)}"
                              ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        unknown = sorted(set(loaded) - set(data))
        if unknown:
            raise ConfigError(f"training config field '{unknown[0]}' (in {path}): unknown key "
                              f"(known keys: {', '.join(sorted(data))})")
        data = deep_merge(data, loaded)
    data = apply_overrides(data, overrides or [], "training config")
    return TrainConfig.from_dict(data)
