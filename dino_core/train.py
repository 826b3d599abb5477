"""The DINO training loop: build, resume, iterate epochs, log, checkpoint, evaluate.

``train(cfg)`` runs on one CPU, one GPU, or every rank of a torchrun / SLURM job (each rank
calls it; ``distributed.init_distributed`` joins the group). Checkpoints are written by rank 0
at the end of every epoch and, with ``checkpoint.every_minutes`` / ``every_steps`` or on
SIGTERM / SIGUSR1 (``preemption.py``), inside an epoch, verified and rotated
(``run_state.py``); a run restarted with the same ``output_dir`` resumes from the last one
and continues exactly (model, optimiser, scaler, loss center, schedules position, RNG
states, data position inside the epoch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed as dist_utils
from . import run_state
from .checkpoint import CheckpointError, check_compatible, check_training_checkpoint, load_state
from .config import TrainConfig
from .data_wait import DataWaitClock
from .models import DINOHead, MultiCropWrapper, build_vit
from .preemption import Preempted, StepGate, StopSignals
from .schedules import Schedules, teacher_temp_schedule
from .step import DINOStep, resolve_precision

log = logging.getLogger("dino_core.train")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


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


def build_models(cfg: TrainConfig, init_backbone: bool = True
                 ) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with drop path) and teacher (without), the teacher a copy of the student;
    both backbones from ``cfg.init_backbone`` unless ``init_backbone`` is False (a resume:
    the checkpoint's weights win, and the file need not exist any more)."""
    m = cfg.model

    def make(drop_path: float) -> MultiCropWrapper:
        backbone = build_vit(m.arch, m.patch_size, drop_path_rate=drop_path)
        head = DINOHead(backbone.embed_dim, m.out_dim, use_bn=m.use_bn_in_head,
                        norm_last_layer=m.norm_last_layer, hidden_dim=m.head_hidden_dim,
                        bottleneck_dim=m.head_bottleneck_dim)
        return MultiCropWrapper(backbone, head)

    student, teacher = make(m.drop_path_rate), make(0.0)
    if cfg.init_backbone and init_backbone:  # a start from released weights: the head is fresh
        from .init_backbone import load_init_backbone, read_init_backbone
        state = read_init_backbone(cfg.init_backbone, m.arch, m.patch_size)
        load_init_backbone(student.backbone, state, cfg.init_backbone)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    if m.compile:
        compile_backbones(student, teacher)
    return student, teacher


def compile_backbones(*wrappers: MultiCropWrapper) -> None:
    """``torch.compile`` each wrapper's backbone in place (``nn.Module.compile``: parameter
    names and checkpoints unchanged), with static shapes: the global and local crop sizes
    each get their own graph (a dynamic-shape graph would be slower for two fixed sizes)."""
    for w in wrappers:
        w.backbone.compile(dynamic=False)


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The DINO loss of ``cfg`` (on the CPU). ``overwrite_logits`` is safe here because
    ``DINOStep`` never reads the student logits after the loss call."""
    from .loss import DINOLoss
    return DINOLoss(cfg.model.out_dim, cfg.data.aug.num_views, cfg.loss.warmup_teacher_temp,
                    cfg.loss.teacher_temp, cfg.loss.warmup_teacher_temp_epochs, cfg.epochs,
                    student_temp=cfg.loss.student_temp, center_momentum=cfg.loss.center_momentum,
                    impl=cfg.loss.impl, overwrite_logits=cfg.loss.overwrite_logits)


@dataclass
class Run:
    """Everything a training run holds."""

    cfg: TrainConfig
    env: dist_utils.DistEnv
    device: torch.device
    student: nn.Module            # maybe DDP-wrapped
    teacher: MultiCropWrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    step: DINOStep
    loader: object                # pipelines.MultiCropLoader
    schedules: Schedules
    iters_per_epoch: int
    knn_root: Path | None
    gate: StepGate
    start_epoch: int = 0
    start_batch: int = 0          # batches of start_epoch already consumed (mid-epoch resume)

    @property
    def bare_student(self) -> MultiCropWrapper:
        return getattr(self.student, "module", self.student)

    def state(self, epoch: int, batch: int = 0) -> dict:
        """The checkpoint after ``epoch`` epochs and ``batch`` batches of the next one
        (plain data and tensors only)."""
        student = {f"module.{k}": v for k, v in self.bare_student.state_dict().items()}
        self.loss_fn.sync_center()  # fold a pending center all-reduce in before saving
        state = {"student": student, "teacher": self.teacher.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                 "epoch_batches": batch, "iteration": epoch * self.iters_per_epoch + batch,
                 "data_position": self.data_position(),
                 "dino_loss": {"center": self.loss_fn.center.detach().cpu()},
                 "config": self.cfg.to_dict(), "rng": run_state.rng_state(self.device)}
        if self.step.scaler is not None:
            state["fp16_scaler"] = self.step.scaler.state_dict()
        return state

    def restore(self, ckpt: dict, path: Path) -> None:
        check_compatible(ckpt, self.cfg.model.__dict__, path)
        check_training_checkpoint(ckpt, path)
        student = {k.removeprefix("module."): v for k, v in ckpt["student"].items()}
        load_state(self.bare_student, student, "student", path)
        load_state(self.teacher, ckpt["teacher"], "teacher", path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loss_fn.load_state_dict({"center": ckpt["dino_loss"]["center"]})
        if self.step.scaler is not None and "fp16_scaler" in ckpt:
            self.step.scaler.load_state_dict(ckpt["fp16_scaler"])
        run_state.set_rng_state(ckpt.get("rng", {}), self.device)
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


def build_run(cfg: TrainConfig, resume_from: str | None = None) -> Run:
    from pipelines import build_loader
    from .optim import build_optimizer

    device_kind = "cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    env = dist_utils.init_distributed(device_kind)
    device = resolve_device(cfg.device, env.local_rank)
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts)
    data, knn_root = resolve_data(cfg)
    loader = build_loader(data, backend=cfg.data.backend, batch_size=cfg.data.batch_size,
                          spec=cfg.data.aug, device=device, num_workers=cfg.data.num_workers,
                          seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    iters = len(loader)  # >= 1: build_loader refuses data that gives no batch
    if cfg.max_iters_per_epoch:
        iters = min(iters, cfg.max_iters_per_epoch)
    resuming = resume_from is not None or run_state.has_checkpoint(Path(cfg.output_dir))
    student, teacher = build_models(cfg, init_backbone=not resuming)
    if cfg.model.use_bn_in_head and env.distributed:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    student, teacher = student.to(device), teacher.to(device)
    optimizer = build_optimizer(student, cfg.optim.optimizer, device)
    if env.distributed:
        student = dist_utils.wrap_ddp(student, device)
    loss_fn = build_loss(cfg).to(device)
    precision = resolve_precision(cfg.precision, device)
    step = DINOStep(student, teacher, loss_fn, optimizer, device, precision,
                    cfg.optim.clip_grad, cfg.optim.freeze_last_layer)
    schedules = Schedules.build(cfg.optim, cfg.epochs, iters,
                                cfg.data.batch_size * env.world_size)
    gate = StepGate(cfg.checkpoint.every_minutes, cfg.checkpoint.every_steps, StopSignals(),
                    env.distributed, device.type)
    return Run(cfg, env, device, student, teacher, loss_fn, optimizer, step, loader, schedules,
               iters, knn_root, gate)


def _maybe_resume(run: Run, out: Path, resume_from: str | None) -> None:
    if resume_from:
        path = Path(resume_from)
        ckpt = run_state.load_verified(path, run.device)
    else:  # checkpoint.pth, else checkpoint_prev.pth when the latest is refused
        found = run_state.load_latest(out, run.device)
        if found is None:
            return
        ckpt, path = found
    run.restore(ckpt, path)
    if run.env.is_main:
        log.info("resumed from %s after epoch %d and %d batches of the next", path,
                 run.start_epoch, run.start_batch)


def train(cfg: TrainConfig, resume_from: str | None = None) -> dict:
    """Train; returns a summary (images/s, data-wait share, last loss, k-NN accuracy)."""
    run = build_run(cfg, resume_from)
    out = Path(cfg.output_dir)
    try:
        if run.env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(out / "config.yaml")
        _maybe_resume(run, out, resume_from)
        run.gate.signals.install()  # SIGTERM / SIGUSR1: checkpoint after this step, stop
        summary = _train_epochs(run, out)
        skip = knn_skip_reason(run) if cfg.knn_eval else None
        if skip is not None:
            log.info("k-NN evaluation skipped: %s", skip)
            summary["knn_skipped"] = skip
        elif cfg.knn_eval:  # every rank extracts its shard
            from .eval.knn import knn_accuracy
            summary["knn"] = knn_accuracy(run.teacher.backbone, run.knn_root, run.device)
        return summary
    finally:
        run.gate.signals.restore()
        run.loader.close()
        dist_utils.shutdown()


def knn_skip_reason(run: Run) -> str | None:
    """Why the k-NN evaluation at the end cannot run (one line), or None when it can."""
    if not getattr(run.loader, "classes", None):
        return "the training data is unlabeled (no classes to evaluate against)"
    if run.knn_root is None:
        return "no train/ and val/ folders next to the training data"
    return None


def _train_epochs(run: Run, out: Path) -> dict:
    from .progress import ProgressLogger
    cfg, n = run.cfg, run.iters_per_epoch
    teacher_temp = teacher_temp_schedule(cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp,
                                         cfg.loss.warmup_teacher_temp_epochs, cfg.epochs)
    batch_images = cfg.data.batch_size * run.env.world_size
    logger = ProgressLogger(out, enabled=run.env.is_main, progress=cfg.progress,
                            total=(cfg.epochs - run.start_epoch) * n - run.start_batch)
    clock = DataWaitClock(run.device)   # data wait: CUDA events on a GPU, host clock on CPU
    images = 0
    last_loss = float("nan")
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            first = run.start_batch if epoch == run.start_epoch else 0
            run.loader.set_epoch(epoch, first_batch=first)
            it0 = epoch * n
            clock.start()
            batches = iter(run.loader)
            stop = False
            for i in range(first, n):
                # fetch
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"loader ended after {i} of {n} batches in epoch {epoch}") from None
                clock.batch_ready()
                it = it0 + i
                run.step(batch.views, epoch, it, float(run.schedules.lr[it]), float(run.schedules.wd[it]),
                         float(run.schedules.momentum[it]))
                clock.step_enqueued()
                images += batch_images
                if (it + 1) % cfg.log_every == 0 or i == n - 1:
                    mean_loss, last_loss, bad = run.step.stats.read()  # host sync (logging step)
                    _stop_if_diverged(bad, epoch, n)
                    wait, wall = clock.totals()  # host sync on GPU (logging step): event times
                    logger.log(it + 1, epoch, {
                        "loss": mean_loss, "lr": run.schedules.lr[it], "wd": run.schedules.wd[it],
                        "momentum": run.schedules.momentum[it],
                        "teacher_temp": float(teacher_temp[epoch]),
                        "images_per_s": images / max(wall, 1e-9),
                        "data_wait_share": wait / max(wall, 1e-9)})
                logger.advance()
                stop, due = run.gate.after_step(it + 1)  # the same answer on every rank
                if (stop or due) and i + 1 < n:  # the epoch's last step: the end one below
                    _checkpoint(run, out, epoch, i + 1)
                    if stop:
                        raise Preempted(f"stopped on {run.gate.signals.name} inside epoch "
                                        f"{epoch} after {i + 1} of {n} batches; checkpoint "
                                        "written")
            del batches
            _checkpoint(run, out, epoch + 1, 0)
            if stop:
                raise Preempted(f"stopped on {run.gate.signals.name} after epoch {epoch + 1}; "
                                "checkpoint written")
    finally:
        logger.close()
    run.gate.drain()
    wait, wall = clock.totals()
    return {"epochs": cfg.epochs, "iterations": cfg.epochs * n, "final_loss": last_loss,
            "images_per_s": images / max(wall, 1e-9), "data_wait_share": wait / max(wall, 1e-9)}


def _checkpoint(run: Run, out: Path, epoch: int, batch: int) -> None:
    """Rank 0 writes the checkpoint after ``epoch`` epochs + ``batch`` batches; all ranks wait."""
    n = run.iters_per_epoch
    # host sync on GPU (checkpoint steps only): never save a poisoned state
    _stop_if_diverged(int(run.step.stats.first_bad), epoch, n)
    if run.env.is_main:
        state = run.state(epoch, batch)
        run_state.save_latest(state, out)
        every = run.cfg.saveckp_freq
        if batch == 0 and every and epoch % every == 0:
            run_state.write_verified(state, out / f"checkpoint{epoch:04d}.pth")
    dist_utils.barrier()
    run.gate.checkpointed()


def _stop_if_diverged(bad_iteration: int, epoch: int, n: int) -> None:
    if bad_iteration >= 0:
        raise TrainingDiverged(
            f"loss is not finite at iteration {bad_iteration} (epoch {bad_iteration // n}, "
            f"step {bad_iteration % n}); stopped without writing a checkpoint, the last good "
            "one is kept. Try --precision bf16/fp32, a lower lr, or a lower teacher_temp.")

