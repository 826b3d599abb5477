"""The DINO training step the benchmarks time: student + teacher, loss, AdamW, EMA.

``build_train_step`` assembles the project's own step (``dino_core.train.step.DINOStep``: autocast,
fused/foreach AdamW, foreach per-tensor clipping, foreach EMA, no host sync) around a student
and teacher built from ``dino_core.models`` (``MultiCropWrapper`` of a ViT and a ``DINOHead``).
The loss is ``dino_core.loss.DINOLoss`` with ``impl="auto"`` (the CUDA kernel on a GPU when
it builds, else the fused torch implementation); ``TrainStep.loss_impl`` says which ran.
``patch`` and ``step`` time it on synthetic views; ``e2e`` feeds it batches from a loader.
``time_within`` is how ``patch`` and ``step`` bound a measurement's run time, and
``failure_status`` how they record a configuration that fails without stopping the sweep.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dino_core.models import DINOHead, MultiCropWrapper, build_vit

from .harness import Timing, synchronize, time_fn


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


def build_models(arch: str, patch: int, out_dim: int, device: torch.device,
                 img_size: int = 224, compile: bool = False) -> tuple[nn.Module, nn.Module]:
    """Student (drop path 0.1) and teacher (no drop path, no grad, same weights); with
    ``compile``, both backbones go through torch.compile as in training (model.compile)."""
    from dino_core.train.loop import compile_backbones

    def make(drop: float) -> nn.Module:
        vit = build_vit(arch, patch, img_size=snap(img_size, patch), drop_path_rate=drop)
        return MultiCropWrapper(vit, DINOHead(vit.embed_dim, out_dim))

    student = make(0.1).to(device)
    teacher = make(0.0).to(device)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    if compile:
        compile_backbones(student, teacher)
    return student, teacher


def build_train_step(arch: str, patch: int, shape: StepShape, device: torch.device,
                     precision: str = "auto", compile: bool = False
                     ) -> tuple[TrainStep, list[torch.Tensor]]:
    """Models, optimizer, loss and step for ``arch``/``patch``; returns the step and its views.

    The step is ``dino_core.train.step.DINOStep`` with ``epoch`` past the last-layer freeze, so
    every parameter is updated as in steady-state training.
    """
    from dino_core.config import LossConfig
    from dino_core.loss import DINOLoss
    from dino_core.train.optim import build_optimizer
    from dino_core.train.step import DINOStep, resolve_precision

    student, teacher = build_models(arch, patch, shape.out_dim, device, shape.global_res,
                                    compile)
    # recipe defaults: tau_t 0.04 without warm-up; 100 epochs bound the schedule's length
    loss = DINOLoss(shape.out_dim, shape.n_global + shape.n_local, warmup_teacher_temp=0.04,
                    teacher_temp=0.04, warmup_teacher_temp_epochs=0, nepochs=100,
                    overwrite_logits=LossConfig().overwrite_logits).to(device)  # as the trainer
    optimizer = build_optimizer(student, "adamw", device)
    precision = resolve_precision(precision, device)
    step = DINOStep(student=student, teacher=teacher, loss_fn=loss, optimizer=optimizer,
                    device=device, precision=precision)
    views = shape.synthetic_views(device)
    counter = iter(range(1 << 62))

    def run(batch: list[torch.Tensor] | None = None) -> torch.Tensor:
        return step(views if batch is None else batch, epoch=step.freeze_last_layer,
                    iteration=next(counter), lr=1e-5, wd=0.04, momentum=0.996)

    logits_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    probe = torch.zeros(1, shape.out_dim, device=device, dtype=logits_dtype)
    loss_impl = f"DINOLoss {loss.resolve_impl(probe)}"
    step_impl = "dino_core.train.step.DINOStep" + (" + torch.compile" if compile else "")
    return TrainStep(run=run, student=student, teacher=teacher, loss_impl=loss_impl,
                     step_impl=step_impl), views


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
