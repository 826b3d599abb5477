"""A tiny, fast training configuration and data for end-to-end tests (CPU, seconds)."""
from __future__ import annotations

from pathlib import Path

from dino_core.config import TrainConfig, load_config

TINY_AUG = [
    "data.aug.global_views=[{size: 32, scale: [0.4, 1.0], blur_p: 1.0, solarize_p: 0.0},"
    " {size: 32, scale: [0.4, 1.0], blur_p: 0.1, solarize_p: 0.2}]",
    "data.aug.local_view={size: 16, scale: [0.05, 0.4], blur_p: 0.5, solarize_p: 0.0}",
    "data.aug.local_crops=2",
]


def tiny_overrides(data: Path, out: Path, epochs: int = 2, batch: int = 4,
                   iters: int = 2) -> list[str]:
    return TINY_AUG + [
        f"data.path={data}", f"output_dir={out}", f"epochs={epochs}",
        f"data.batch_size={batch}", "data.num_workers=0", f"max_iters_per_epoch={iters}",
        "model.arch=vit_tiny", "model.out_dim=64", "model.head_hidden_dim=64",
        "model.head_bottleneck_dim=32", "optim.warmup_epochs=1",
        "device=cpu", "progress=false", "knn_eval=false", "log_every=1", "loss.impl=fused",
    ]


# The dinov2 recipe on top of tiny_overrides: patch 8 (4 x 4 grids of the 32 px globals, so
# the masks have room for blocks), a separate small iBOT head, no temperature warm-up.
TINY_DINOV2 = [
    "recipe=dinov2", "model.patch_size=8", "data.aug.masking={patch_size: 8}",
    "dinov2.warmup_teacher_temp_epochs=0", "dinov2.separate_ibot_head=true",
    "dinov2.ibot_out_dim=48", "dinov2.ibot_head_hidden_dim=64",
    "dinov2.ibot_head_bottleneck_dim=32",
]


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    extra = kw.pop("extra", [])
    return load_config(None, tiny_overrides(data, out, **kw) + extra)


def step_inputs(views: list, epoch: int, iteration: int, lr: float, wd: float, momentum: float,
                teacher_temp: float = 0.04, masks=None):
    """What a ``TrainStep`` takes for ``views`` (globals first) at these schedule values: a
    ``Batch`` (labels 0, sample ids 0..B-1, ``masks``) and ``StepValues``."""
    import torch

    from dino_core.train.schedules import StepValues
    from pipelines.batch import Batch

    b = views[0].shape[0]
    batch = Batch(list(views), torch.zeros(b, dtype=torch.long), torch.arange(b), masks)
    return batch, StepValues(epoch, iteration, lr, wd, momentum, teacher_temp)
