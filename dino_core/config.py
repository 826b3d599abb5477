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
from pipelines.spec import AugmentationSpec, SpecError, expand_preset

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
    # Backbone options of DINOv2 (dino_core/models/vit.py); the defaults are DINO's ViT.
    img_size: int = 0             # position grid in pixels; 0: 224 rounded down to a multiple
    #                               of patch_size (DINOv2's released models: 518, 37x37 at 14)
    layerscale: float = 0.0       # LayerScale init of ls1/ls2.gamma; 0: none (DINOv2: 1e-5)
    register_tokens: int = 0      # register tokens after CLS (DINOv2 with registers: 4)
    ffn_layer: str = "mlp"        # mlp (GELU) | swiglu (DINOv2's ViT-g/14)
    drop_path_uniform: bool = False   # one drop-path rate in every block (DINOv2) instead of
    #                                   a rate rising linearly over depth (DINO)
    interpolate_offset: float = 0.1   # position-embedding resize; DINOv2 with registers: 0.0
    interpolate_antialias: bool = False  # DINOv2 with registers: true

    def vit_options(self) -> dict:
        """The backbone keywords of ``models.build_vit`` these fields give (every recipe
        builds its backbone with them; it adds its own drop path and mask token)."""
        grid = {"img_size": self.img_size} if self.img_size else {}
        return {**grid, "layerscale": self.layerscale,
                "num_register_tokens": self.register_tokens, "ffn_layer": self.ffn_layer,
                "drop_path_uniform": self.drop_path_uniform,
                "interpolate_offset": self.interpolate_offset,
                "interpolate_antialias": self.interpolate_antialias}


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None       # None: the embedded default dataset (its train split)
    backend: str = "reference"    # reference | dali | ffcv
    batch_size: int = 64          # per rank
    num_workers: int = 4
    # ffcv: "IMAGE,LABEL", the fields of a .beton to read (default: the first RGB image
    # field and the first int field, as FFCV's own DatasetWriter names them)
    ffcv_fields: str | None = None
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
    # DINOv2's parameter groups (dino_core/train/optim.py); 1.0 and 1.0 give DINO's two groups.
    layer_decay: float = 1.0      # lr x layer_decay^(depth + 1 - layer) (DINOv2: 0.9; 1.0 in
    #                               its ViT-L/14 and ViT-g/14 LVD-142M configs)
    patch_embed_lr_mult: float = 1.0  # extra lr factor of the patch embedding (DINOv2: 0.2)
    lr_scaling: str = "linear"    # linear: lr x global batch / 256 (DINO); sqrt: lr x
    #                               sqrt(global batch / 1024) (DINOv2's base_lr rule)
    clip_mode: str = "per_tensor"  # clip_grad per tensor (DINO) | per_part: one norm per
    #                                part of the student, backbone and each head (DINOv2)
    freeze_mode: str = "drop_grad"  # freeze_last_layer by dropping the gradients (DINO) |
    #                                 zero_lr: lr 0, AdamW moments still updated (DINOv2)


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
    # How the models live on the ranks (dino_core.parallel): ddp (every rank the whole
    # student, teacher and optimizer) | fsdp (FSDP2: each rank a shard of each block).
    parallel: str = "ddp"
    # Recompute each transformer block's activations in the backward instead of keeping them
    # (the student's; less memory, about one more forward of compute).
    activation_checkpointing: bool = False
    # Micro-batches per optimizer step: the batch of data.batch_size images per rank is cut
    # into grad_accum micro-batches of data.batch_size / grad_accum (train/accumulation.py).
    grad_accum: int = 1
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
        from .parallel.strategy import STRATEGIES
        from .recipes import RECIPES
        _check(self.recipe in RECIPES, "recipe",
               f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        _check(self.model.arch in ARCHS, "model.arch",
               f"unknown architecture {self.model.arch!r}; choose from {', '.join(ARCHS)}")
        _check(self.model.patch_size >= 1, "model.patch_size", "must be >= 1")
        _check(self.model.out_dim >= 2, "model.out_dim", "must be >= 2")
        _check(0 <= self.model.drop_path_rate < 1, "model.drop_path_rate", "must be in [0, 1)")
        self._check_backbone_options()
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
        _check(0 < self.optim.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]")
        _check(self.optim.patch_embed_lr_mult > 0, "optim.patch_embed_lr_mult", "must be > 0")
        _check(self.optim.lr_scaling in ("linear", "sqrt"), "optim.lr_scaling",
               f"must be linear or sqrt, got {self.optim.lr_scaling!r}")
        from .train.optim import CLIP_MODES, FREEZE_MODES
        _check(self.optim.clip_mode in CLIP_MODES, "optim.clip_mode",
               f"must be one of {', '.join(CLIP_MODES)}, got {self.optim.clip_mode!r}")
        _check(self.optim.freeze_mode in FREEZE_MODES, "optim.freeze_mode",
               f"must be one of {', '.join(FREEZE_MODES)}, got {self.optim.freeze_mode!r}")
        _check(self.loss.impl in ("auto", "reference", "fused", "cuda"), "loss.impl",
               f"must be auto, reference, fused or cuda, got {self.loss.impl!r}")
        _check(self.loss.teacher_temp > 0 and self.loss.student_temp > 0, "loss.teacher_temp",
               "temperatures must be > 0")
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        _check(self.parallel in STRATEGIES, "parallel",
               f"must be one of {', '.join(STRATEGIES)}, got {self.parallel!r}")
        _check(not (self.parallel == "fsdp" and self.precision == "fp16"), "precision",
               "fp16 (a GradScaler over sharded gradients) is not offered with parallel=fsdp; "
               "use bf16 (fp32 master weights and gradient reduction) or fp32")
        _check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _check(self.data.batch_size % self.grad_accum == 0, "grad_accum",
               f"must divide data.batch_size ({self.data.batch_size}): the batch is cut into "
               f"grad_accum micro-batches of equal size")
        _check(self.log_every >= 1, "log_every", "must be >= 1")
        _check(self.checkpoint.every_minutes >= 0, "checkpoint.every_minutes",
               "must be >= 0 (0: checkpoints at epoch ends only)")
        _check(self.checkpoint.every_steps >= 0, "checkpoint.every_steps",
               "must be >= 0 (0: off)")
        _check(self.saveckp_freq >= 0, "saveckp_freq", "must be >= 0 (0: never)")
        if self.recipe == "dinov2":
            check_dinov2(self)

    def _check_backbone_options(self) -> None:
        from .models.vit import FFN_LAYERS
        m = self.model
        _check(m.img_size == 0 or (m.img_size >= m.patch_size and m.img_size % m.patch_size == 0),
               "model.img_size", f"must be 0 (224 px) or a multiple of model.patch_size "
               f"{m.patch_size}, got {m.img_size}")
        _check(m.layerscale >= 0, "model.layerscale", "must be >= 0 (0: no LayerScale)")
        _check(m.register_tokens >= 0, "model.register_tokens", "must be >= 0")
        _check(m.ffn_layer in FFN_LAYERS, "model.ffn_layer",
               f"must be one of {', '.join(FFN_LAYERS)}, got {m.ffn_layer!r}")
        _check(m.interpolate_offset >= 0, "model.interpolate_offset", "must be >= 0")
        try:
            self.data.aug.check_patch_size(m.patch_size)
        except SpecError as e:
            raise ConfigError(f"training config data.aug: {e}") from None

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


def _aug_preset(aug: dict) -> dict:
    """``data.aug`` with a ``preset`` key expanded (``pipelines.spec.expand_preset``)."""
    try:
        return expand_preset(aug)
    except SpecError as e:
        raise ConfigError(f"training config data.aug: {e}") from None


PRESETS_DIR = Path(__file__).resolve().parent / "configs"  # shipped presets, by name


def _read_config_file(path: Path, known: set[str], seen: tuple[Path, ...] = ()) -> dict:
    """The mapping of the YAML file ``path``, on top of the file its ``extends`` key names
    (a shipped preset's name, or a path relative to ``path``'s folder), recursively."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself (through "
                          f"{' -> '.join(str(p) for p in seen)})")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    unknown = sorted(set(loaded) - known - {"extends"})
    if unknown:
        raise ConfigError(f"training config field '{unknown[0]}' (in {path}): unknown key "
                          f"(known keys: {', '.join(sorted(known))})")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'extends' must name a preset or a file")
    preset = PRESETS_DIR / f"{base}.yaml"
    base_path = preset if preset.is_file() else path.parent / base
    return deep_merge(_read_config_file(base_path, known, seen + (path.resolve(),)), loaded)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any; an ``extends: NAME`` key in it
    loads the preset or file NAME first), then ``key.sub=value`` overrides.

    ``data.aug`` may name an augmentation preset (``pipelines.spec.SPEC_PRESETS``): in the
    YAML as ``aug: {preset: dinov2, ...}`` (the other keys change the preset), on the
    command line as ``data.aug.preset=dinov2``, which replaces the whole section before the
    other overrides apply.
    """
    data = TrainConfig().to_dict()
    if path is not None:
        loaded = _read_config_file(Path(path), set(data))
        section = loaded.get("data")
        if isinstance(section, dict) and isinstance(section.get("aug"), dict):
            loaded = {**loaded, "data": {**section, "aug": _aug_preset(section["aug"])}}
        data = deep_merge(data, loaded)
    overrides = list(overrides or [])
    presets = [o for o in overrides if o.partition("=")[0].strip() == "data.aug.preset"]
    if presets:  # the last one wins, as for any key
        name = yaml.safe_load(presets[-1].partition("=")[2] or "''")
        data["data"]["aug"] = _aug_preset({"preset": name})
        overrides = [o for o in overrides if o not in presets]
    data = apply_overrides(data, overrides, "training config")
    return TrainConfig.from_dict(data)
