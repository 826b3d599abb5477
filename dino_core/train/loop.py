"""The training loop: build, resume, iterate epochs, log, checkpoint, evaluate.

``train(cfg)`` runs on one CPU, one GPU, or every rank of a torchrun / SLURM job (each rank
calls it; the parallel strategy joins the group). Checkpoints go through the strategy's
store (``store.py``): at the end of every epoch and, with ``checkpoint.every_minutes`` /
``every_steps`` or on SIGTERM / SIGUSR1 (``preemption.py``), inside an epoch, verified and
rotated; a run restarted with the same ``output_dir`` resumes from the last one and
continues exactly (model, optimiser, scaler, the recipe's state, schedules position, RNG
states, data position inside the epoch). What is built and computed is the recipe's
(``run.py``, ``dino_core.recipes``); a step's mechanics are ``step.py``'s.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch


from ..config import TrainConfig
from ..parallel.env import shutdown
from .data_wait import DataWaitClock
from .preemption import Preempted
from .run import Run, build_run, resume

log = logging.getLogger("dino_core.train")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


def train(cfg: TrainConfig, resume_from: str | None = None) -> dict:
    """Train; returns a summary (images/s, data-wait share, last loss, k-NN accuracy)."""
    run = build_run(cfg, resume_from)
    out = Path(cfg.output_dir)
    try:
        if run.env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(out / "config.yaml")
        resume(run, resume_from)
        run.gate.signals.install()  # SIGTERM / SIGUSR1: checkpoint after this step, stop
        summary = _train_epochs(run, out)
        skip = knn_skip_reason(run) if cfg.knn_eval else None
        if skip is not None:
            log.info("k-NN evaluation skipped: %s", skip)
            summary["knn_skipped"] = skip
        elif cfg.knn_eval:  # every rank extracts its shard
            from ..eval.knn import knn_accuracy
            teacher = run.strategy.unwrap(run.teacher)
            summary["knn"] = knn_accuracy(teacher.backbone, run.knn_root, run.device)
        return summary
    finally:
        run.gate.signals.restore()
        run.loader.close()
        run.release()
        shutdown()


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
                at = run.schedules.at(it0 + i)
                run.step(batch, at)
                clock.step_enqueued()
                images += batch_images
                if (at.iteration + 1) % cfg.log_every == 0 or i == n - 1:
                    stats = run.step.stats.read()  # host sync (logging step)
                    last_loss = stats.last_loss
                    _stop_if_diverged(stats.first_bad, epoch, n)
                    wait, wall = clock.totals()  # host sync on GPU (logging step): event times
                    logger.log(at.iteration + 1, epoch, {
                        **stats.means, "lr": at.lr, "wd": at.wd, "momentum": at.momentum,
                        "teacher_temp": at.teacher_temp, "images_per_s": images / max(wall, 1e-9),
                        "data_wait_share": wait / max(wall, 1e-9)})
                logger.advance()
                stop, due = run.gate.after_step(at.iteration + 1)  # the same answer on every rank
                if (stop or due) and i + 1 < n:  # the epoch's last step: the end one below
                    _checkpoint(run, epoch, i + 1)
                    if stop:
                        raise Preempted(f"stopped on {run.gate.signals.name} inside epoch "
                                        f"{epoch} after {i + 1} of {n} batches; checkpoint "
                                        "written")
            del batches
            _checkpoint(run, epoch + 1, 0)
            if stop:
                raise Preempted(f"stopped on {run.gate.signals.name} after epoch {epoch + 1}; "
                                "checkpoint written")
    finally:
        logger.close()
    run.gate.drain()
    wait, wall = clock.totals()
    return {"epochs": cfg.epochs, "iterations": cfg.epochs * n, "final_loss": last_loss,
            "images_per_s": images / max(wall, 1e-9), "data_wait_share": wait / max(wall, 1e-9)}


def _checkpoint(run: Run, epoch: int, batch: int) -> None:
    """The checkpoint after ``epoch`` epochs + ``batch`` batches, through the store (every
    rank calls it; DDP: rank 0 writes, all ranks wait)."""
    n = run.iters_per_epoch
    # host sync on GPU (checkpoint steps only): never save a poisoned state
    _stop_if_diverged(int(run.step.stats.first_bad), epoch, n)
    every = run.cfg.saveckp_freq
    keep = epoch if batch == 0 and every and epoch % every == 0 else None
    run.store.save(lambda: run.state(epoch, batch), keep_epoch=keep)
    run.gate.checkpointed()


def _stop_if_diverged(bad_iteration: int, epoch: int, n: int) -> None:
    if bad_iteration >= 0:
        raise TrainingDiverged(
            f"loss is not finite at iteration {bad_iteration} (epoch {bad_iteration // n}, "
            f"step {bad_iteration % n}); stopped without writing a checkpoint, the last good "
            "one is kept. Try --precision bf16/fp32, a lower lr, or a lower teacher_temp.")

