"""The training step the benchmarks time: student + teacher, losses, AdamW, EMA.

``build_train_step`` assembles the project's own step (``dino_core.train.step.TrainStep``:
autocast, fused/foreach AdamW, foreach per-tensor clipping, foreach EMA, no host sync) around
a recipe as training builds it (``RECIPES``: dino, the default, or dinov2 with its masks;
``dino_core.recipes``, its one model assembly and its losses with ``impl="auto"``, the CUDA
kernel on a GPU when it builds, else the fused torch implementation); ``TrainStep.loss_impl``
says which ran.
``patch`` and ``step`` time it on synthetic views; ``e2e`` feeds it batches from a loader.
``time_within`` is how ``patch`` and ``step`` bound a measurement's run time, and
``failure_status`` how they record a configuration that fails without stopping the sweep.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from dino_core.config import DataConfig, LossConfig, ModelConfig, TrainConfig
from dino_core.recipes.dinov2_config import DINOv2Config
from dino_core.recipes import build_recipe
from dino_core.recipes.base import Recipe
from dino_core.train.schedules import StepValues, teacher_temp_schedule
from pipelines.batch import Batch
from pipelines.sampling.masks import draw_batch_masks
from pipelines.spec import AugmentationSpec, MaskingSpec

from ..harness.timing import Timing, synchronize, time_fn


@dataclass(frozen=True)
class StepShape:
    """The multi-crop batch one step consumes (per image: n_global + n_local crops)."""

    batch: int
    global_res: int = 224
    local_res: int = 96
    n_global: int = 2
    n_local: int = 10
    out_dim: int = 65536

    def synthetic_views(self, device: torch.device) -> list[torch.Tensor]:
        """Random normalised-looking views: globals (B, 3, G, G) first, then locals."""
        gen = torch.Generator(device="cpu").manual_seed(0)
        sizes = [self.global_res] * self.n_global + [self.local_res] * self.n_local
        return [torch.randn(self.batch, 3, s, s, generator=gen).to(device) for s in sizes]


def snap(resolution: int, patch: int) -> int:
    """The multiple of ``patch`` nearest to ``resolution`` (at least one patch)."""
    return max(patch, round(resolution / patch) * patch)


@dataclass
class TrainStep:
    """A ready-to-time step: ``run()`` does one full update on fixed synthetic views,
    ``run(views)`` on the given views (globals first); both return the loss on the device."""

    run: Callable[..., torch.Tensor]
    student: nn.Module
    teacher: nn.Module
    loss_impl: str
    step_impl: str


RECIPES = ("dino", "dinov2")  # what the step and e2e benchmarks time, DINO first


def recipe_sections(recipe: str, patch: int) -> tuple[dict, MaskingSpec | None]:
    """``recipe``'s ``TrainConfig`` fields besides model, data and loss, and the spec's
    masking section: nothing for DINO; for DINOv2 its defaults (Sinkhorn-Knopp, one shared
    head, dino/ibot/koleo) without the teacher-temperature warm-up (a benchmark is one
    epoch's steady state) and DINOv2's masks at ``patch``."""
    if recipe == "dino":
        return {}, None
    if recipe == "dinov2":
        return ({"recipe": "dinov2", "dinov2": DINOv2Config(warmup_teacher_temp_epochs=0)},
                MaskingSpec(patch_size=patch))
    raise ValueError(f"no benchmark settings for recipe {recipe!r} (one of {RECIPES})")


def bench_config(arch: str, patch: int, shape: StepShape, compile: bool = False,
                 loss_impl: str = "auto", recipe: str = "dino") -> TrainConfig:
    """The training config of a timed step: ``arch``/``patch``, ``shape``'s views and K, and
    otherwise the training defaults of ``recipe`` (DINO: tau_t 0.04 without warm-up over 100
    epochs, ``overwrite_logits`` on, with ``loss_impl``; DINOv2: ``recipe_sections``)."""
    sections, masking = recipe_sections(recipe, patch)
    return TrainConfig(model=ModelConfig(arch=arch, patch_size=patch, out_dim=shape.out_dim,
                                         compile=compile),
                       data=DataConfig(aug=AugmentationSpec(local_crops=shape.n_local,
                                                            masking=masking)),
                       loss=LossConfig(impl=loss_impl), **sections)


def build_models(recipe: Recipe, patch: int, device: torch.device, img_size: int = 224
                 ) -> tuple[nn.Module, nn.Module]:
    """The recipe's student and teacher (its one assembly, as in training) with a position
    grid of ``img_size`` snapped to the patch, on ``device``; the recipe's state too."""
    student, teacher = recipe.build_models(img_size=snap(img_size, patch))
    recipe.to(device)
    return student.to(device), teacher.to(device)


def steady_values(cfg: TrainConfig, recipe: Recipe, epoch: int
                  ) -> Callable[[int], StepValues]:
    """iteration -> the values of a steady-state step in ``epoch``: fixed lr / wd / momentum,
    and tau_t as the run's schedule gives it for that epoch."""
    temps = recipe.teacher_temp_settings
    tau = teacher_temp_schedule(temps.warmup_teacher_temp, temps.teacher_temp,
                                temps.warmup_teacher_temp_epochs, cfg.epochs)[epoch]
    return lambda iteration: StepValues(epoch, iteration, lr=1e-5, wd=0.04, momentum=0.996,
                                        teacher_temp=tau)


def synthetic_batch(views: list[torch.Tensor], spec: AugmentationSpec | None = None) -> Batch:
    """Views (globals first) as a ``Batch`` (labels 0, sample ids 0..B-1), with the masks of
    batch 0 of epoch 0 (seed 0, rank 0) when ``spec`` has a masking section: CPU, as the
    loaders give them (``views``' sizes must match the spec's mask grid)."""
    b = views[0].shape[0]
    masks = None
    if spec is not None and spec.masking is not None:
        masks = draw_batch_masks(spec, 0, 0, 0, 0, b)
    return Batch(views, torch.zeros(b, dtype=torch.long, device=views[0].device),
                 torch.arange(b, device=views[0].device), masks)


def build_train_step(arch: str, patch: int, shape: StepShape, device: torch.device,
                     precision: str = "auto", compile: bool = False, recipe: str = "dino"
                     ) -> tuple[TrainStep, list[torch.Tensor]]:
    """``recipe``, models, optimizer and step for ``arch``/``patch``; returns the step and its
    views.

    The step is ``dino_core.train.step.TrainStep`` with ``epoch`` past the last-layer
    freeze, so every parameter is updated as in steady-state training.
    """
    from dino_core.train.optim import build_optimizer
    from dino_core.train.step import TrainStep as Step
    from dino_core.train.step import resolve_precision

    cfg = bench_config(arch, patch, shape, compile, recipe=recipe)
    method = build_recipe(cfg)
    student, teacher = build_models(method, patch, device, shape.global_res)
    optimizer = build_optimizer(student, "adamw", device)
    precision = resolve_precision(precision, device)
    step = Step(method, student, teacher, optimizer, device, precision)
    views = shape.synthetic_views(device)
    spec = cfg.data.aug.with_overrides(global_views=tuple(
        replace(v, size=shape.global_res) for v in cfg.data.aug.global_views))
    fixed = synthetic_batch(views, spec)
    values = steady_values(cfg, method, step.freeze_last_layer)
    counter = iter(range(1 << 62))

    def run(batch: Batch | None = None) -> torch.Tensor:
        return step(fixed if batch is None else batch, values(next(counter)))

    logits_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    step_impl = "dino_core.train.step.TrainStep" + (" + torch.compile" if compile else "")
    return TrainStep(run=run, student=student, teacher=teacher,
                     loss_impl=method.describe(device, logits_dtype), step_impl=step_impl), views


@dataclass(frozen=True)
class Bounded:
    """A measurement bounded in time: the timing, and what the warm-up cost."""

    timing: Timing
    warmup_s: float      # warm-up calls plus the probe (includes any compilation)
    probe_s: float       # one synchronised call after warm-up: the estimate iters came from


def time_within(fn: Callable[[], object], device: torch.device, warmup: int, max_iters: int,
                seconds: float | None, min_iters: int = 3) -> Bounded:
    """``time_fn`` with the number of timed calls chosen to take about ``seconds``.

    After ``warmup`` calls, one more call is timed alone (synchronised before and after: a
    host sync outside the timed loop) to estimate a call's time; then
    ``clamp(seconds / estimate, min_iters, max_iters)`` calls are timed by ``time_fn``
    (CUDA events, one sync at the end). ``seconds=None`` times exactly ``max_iters``.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)  # host sync: warm-up done (outside the timing)
    t1 = time.perf_counter()
    fn()
    synchronize(device)  # host sync: the probe call alone
    t2 = time.perf_counter()
    iters = max_iters
    if seconds is not None:
        iters = max(min_iters, min(max_iters, int(seconds / max(t2 - t1, 1e-9))))
    return Bounded(time_fn(fn, device, warmup=0, iters=iters), warmup_s=t2 - t0,
                   probe_s=t2 - t1)


def failure_status(where: str, err: BaseException) -> str:
    """One line naming what failed and why, for a result row's ``status``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower() \
            or "can't allocate memory" in text.lower():
        return f"{where}: out of memory"
    return f"{where}: {type(err).__name__}: {text[:300]}"


def release(device: torch.device) -> None:
    """Free what a finished (or failed) configuration held before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
