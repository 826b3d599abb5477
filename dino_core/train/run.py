"""A training run's parts, built once: strategy, recipe, models, optimizer, step, loader.

``build_run(cfg)`` puts them together on every rank, in an order that keeps runs
reproducible: seed, loader, the recipe's models (from ``init_backbone`` unless resuming),
activation checkpointing of the student's blocks (``--activation-checkpointing``), the
strategy's wrap (``--parallel``: DDP across ranks, or FSDP2's shards), then the optimizer
over the plain student (DTensor shards under FSDP). ``Run``
says what a checkpoint holds (``state``) and restores it (``restore``): the engine's
entries (models and optimizer through the strategy, scaler, position, RNG) and the
recipe's own (DINO: the center), without knowing what the latter are.
"""
from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..formats.files import CheckpointError
from ..models.checkpointing import checkpoint_blocks
from ..parallel.env import DistEnv
from ..parallel.strategy import ParallelStrategy, build_strategy
from ..recipes import build_recipe
from ..recipes.base import Recipe
from .checkpoint import check_compatible, check_training_checkpoint
from .preemption import StepGate, StopSignals
from .rng import rng_state, set_rng_state
from .schedules import Schedules
from .step import TrainStep, resolve_precision
from .store import CheckpointStore

log = logging.getLogger("dino_core.train")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available "
                           "(use --device cpu)")
    return device


def resolve_data(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """(training data, root with train/ and val/ for k-NN, or None)."""
    if cfg.data.path is None:
        from pipelines.embedded import default_dataset
        root = default_dataset()
        return root / "train", root
    path = Path(cfg.data.path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    root = path.parent if path.name == "train" else path
    has_split = (root / "train").is_dir() and (root / "val").is_dir()
    return path, (root if has_split else None)


def backend_options(cfg: TrainConfig) -> dict:
    """The data backend's own options the config sets (``build_loader``'s keywords)."""
    if cfg.data.ffcv_fields is None:
        return {}
    if cfg.data.backend != "ffcv":
        raise ValueError(f"--ffcv-fields / data.ffcv_fields is for --backend ffcv, not "
                         f"{cfg.data.backend}")
    return {"fields": cfg.data.ffcv_fields}


@dataclass
class Run:
    """Everything a training run holds."""

    cfg: TrainConfig
    strategy: ParallelStrategy
    device: torch.device
    recipe: Recipe
    student: nn.Module            # as the strategy wrapped it (DDP across ranks)
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    step: TrainStep
    loader: object                # pipelines.MultiCropLoader
    schedules: Schedules
    store: CheckpointStore
    iters_per_epoch: int
    knn_root: Path | None
    gate: StepGate
    start_epoch: int = 0
    start_batch: int = 0          # batches of start_epoch already consumed (mid-epoch resume)

    @property
    def env(self) -> DistEnv:
        return self.strategy.env

    def release(self) -> None:
        """Drop the models, optimizer and step (and, on the way out of an exception, the
        locals of the finished frames it passed through) before the process group is
        destroyed (``parallel.env.shutdown``).

        DDP's reducer holds a reference to the gloo/NCCL group. Destroyed after the group
        was deregistered, it drops the last reference with the GIL held, and the group's
        destructor joins its worker threads, one of which may be freeing a finished
        collective whose tensors belong to Python and so waits for the GIL: a deadlock at
        exit (seen ~1 run in 4 of the torchrun tests on 2 loaded cores; gdb showed exactly
        these two threads). Released first, the reducer drops a reference that is not the
        last, and the group dies in ``destroy_process_group`` without holding the GIL.
        """
        exc = sys.exc_info()[1]
        if exc is not None:  # frames of the step etc. still hold the DDP-wrapped student
            traceback.clear_frames(exc.__traceback__)
        for name in ("student", "teacher", "optimizer", "step", "recipe"):
            setattr(self, name, None)

    @property
    def bare_student(self) -> nn.Module:
        return self.strategy.unwrap(self.student)

    def state(self, epoch: int, batch: int = 0) -> dict:
        """The checkpoint after ``epoch`` epochs and ``batch`` batches of the next one
        (plain data and tensors only; layout in ``checkpoint.py``)."""
        s = self.strategy
        student = {f"module.{k}": v for k, v in s.model_state(self.student).items()}
        state = {"student": student, "teacher": s.model_state(self.teacher),
                 "optimizer": s.optimizer_state(self.optimizer, self.student), "epoch": epoch,
                 "epoch_batches": batch, "iteration": epoch * self.iters_per_epoch + batch,
                 "data_position": self.data_position(), **self.recipe.state_dict(),
                 "config": self.cfg.to_dict(), "rng": rng_state(self.device)}
        if self.step.scaler is not None:
            state["fp16_scaler"] = self.step.scaler.state_dict()
        return state

    def restore(self, ckpt: dict, path: Path) -> None:
        check_compatible(ckpt, self.cfg.model.__dict__, path)
        check_training_checkpoint(ckpt, path)
        s = self.strategy
        s.load_model_state(self.student, without_module_prefix(ckpt["student"]), "student", path)
        s.load_model_state(self.teacher, ckpt["teacher"], "teacher", path)
        s.load_optimizer_state(self.optimizer, self.student, ckpt["optimizer"])
        self.recipe.load_state_dict(ckpt, path)
        if self.step.scaler is not None and "fp16_scaler" in ckpt:
            self.step.scaler.load_state_dict(ckpt["fp16_scaler"])
        set_rng_state(ckpt.get("rng", {}), self.device)
        self.start_epoch = int(ckpt["epoch"])
        self.start_batch = int(ckpt.get("epoch_batches", 0))
        if self.start_batch:  # batch k means the same samples only with the same batching
            saved, now = ckpt.get("data_position"), self.data_position()
            if saved != now:
                raise CheckpointError(
                    f"checkpoint {path} stopped inside epoch {self.start_epoch} with data "
                    f"position {saved}, which this run cannot continue ({now}); resume with "
                    "the same batch size, world size, seed and data")

    def data_position(self) -> dict:
        """What batch k of an epoch means: the same k is the same samples only if equal."""
        return {"batch_size": self.cfg.data.batch_size, "world_size": self.env.world_size,
                "seed": self.cfg.seed, "batches_per_epoch": self.iters_per_epoch,
                "num_samples": int(self.loader.num_samples)}


def without_module_prefix(student):
    """The student entry by the plain module's names: a state dict's keys without the
    ``module.`` of the layout; a sharded entry told that its stored names have it."""
    if isinstance(student, dict):
        return {k.removeprefix("module."): v for k, v in student.items()}
    return student.with_prefix("module.")


def build_run(cfg: TrainConfig, resume_from: str | None = None) -> Run:
    from pipelines import build_loader
    from .optim import build_optimizer

    device_kind = "cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    precision = resolve_precision(cfg.precision, torch.device(device_kind))
    strategy = build_strategy(cfg.parallel, device_kind, precision, cfg.grad_accum)
    env = strategy.env
    device = resolve_device(cfg.device, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any collective (a one-rank FSDP group's too)
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts)
    data, knn_root = resolve_data(cfg)
    loader = build_loader(data, backend=cfg.data.backend, batch_size=cfg.data.batch_size,
                          spec=cfg.data.aug, device=device, num_workers=cfg.data.num_workers,
                          seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                          **backend_options(cfg))
    iters = len(loader)  # >= 1: build_loader refuses data that gives no batch
    if cfg.max_iters_per_epoch:
        iters = min(iters, cfg.max_iters_per_epoch)
    store = strategy.checkpoint_store(Path(cfg.output_dir))
    resuming = resume_from is not None or store.exists()
    recipe = build_recipe(cfg)
    student, teacher = recipe.build_models(init_backbone=not resuming)
    if cfg.activation_checkpointing:
        checkpoint_blocks(student)  # the teacher runs without grad: nothing to recompute
    student, teacher = strategy.wrap(student, teacher, device)
    optimizer = build_optimizer(strategy.unwrap(student), cfg.optim.optimizer, device,
                                cfg.optim.layer_decay, cfg.optim.patch_embed_lr_mult,
                                split_last_layer=cfg.optim.freeze_mode == "zero_lr")
    recipe.to(device)
    step = TrainStep(recipe, student, teacher, optimizer, device, precision, cfg.optim.clip_grad,
                     cfg.optim.freeze_last_layer, strategy=strategy, grad_accum=cfg.grad_accum,
                     clip_mode=cfg.optim.clip_mode, freeze_mode=cfg.optim.freeze_mode)
    schedules = Schedules.build(cfg.optim, recipe.teacher_temp_settings, cfg.epochs, iters,
                                cfg.data.batch_size * env.world_size)
    gate = StepGate(cfg.checkpoint.every_minutes, cfg.checkpoint.every_steps, StopSignals(),
                    env.distributed, device.type)
    return Run(cfg, strategy, device, recipe, student, teacher, optimizer, step, loader,
               schedules, store, iters, knn_root, gate)


def resume(run: Run, resume_from: str | None) -> None:
    """Restore ``run`` from ``resume_from``, else from its store's latest good checkpoint
    (the previous one when the latest is refused); nothing to do when there is none."""
    if resume_from:
        path = Path(resume_from)
        ckpt = run.store.load(path, run.device)
    else:
        found = run.store.load_latest(run.device)
        if found is None:
            return
        ckpt, path = found
    run.restore(ckpt, path)
    if run.env.is_main:
        log.info("resumed from %s after epoch %d and %d batches of the next", path,
                 run.start_epoch, run.start_batch)
