"""``dino-bench e2e``: a short real training run per backend, and how long it waits for data.

For each backend (and the reference executor, first, as the baseline) the same model is
trained for a few steps on batches from ``pipelines.build_loader``. Reported: training
images/s and the share of step time spent waiting for data. Two engines:

- ``trainer`` (default): ``dino_core.train.train`` itself, one epoch capped at the requested
  steps, with its own accounting: host time blocked in ``next(loader)`` over the loop's wall
  time, every step counted (the first ones include loader start-up).
- ``loop``: a loader + ``dino_core.step.DINOStep`` loop with warm-up steps left out. On the
  CPU the data wait is the host time in ``next(loader)`` over the iteration time; on a GPU
  it is the idle gap of the stream between one step's end and the next step's start (CUDA
  events, one host sync at the end) over the stream's total time: the time the GPU really
  waited for a batch (and for the host to launch work).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .harness import BenchmarkResult, PlotSpec, cpu_cores, describe_machine, summarize
from .pipeline import (BackendUnavailable, EpochCycler, add_ratios, for_each_backend,
                       opened_loader)
from .trainstep import StepShape, build_train_step, snap


ENGINES = ("trainer", "loop")


@dataclass(frozen=True)
class E2EConfig:
    """The short run: model, batch, steps, and the backends to feed it."""

    backends: tuple[str, ...] = ("dali",)
    reference: str = "reference"
    data: str | None = None
    backend_data: dict[str, str] = field(default_factory=dict)
    arch: str = "vit_small"
    patch: int = 16
    batch_size: int = 64
    num_workers: int = field(default_factory=cpu_cores)
    local_crops: int = 10
    global_size: int | None = None   # None: the recipe's 224 px
    local_size: int | None = None    # None: the recipe's 96 px
    out_dim: int = 65536
    warmup_steps: int = 5
    steps: int = 50
    precision: str = "auto"
    engine: str = "trainer"   # trainer: dino_core.train.train; loop: loader + step, CUDA events

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")

    @classmethod
    def quick(cls, **overrides) -> "E2EConfig":
        """ViT-tiny, 64 px + 2 x 32 px crops, a few steps of batch 4: a CPU-sized smoke run."""
        base = dict(backends=("reference",), arch="vit_tiny", batch_size=4,
                    num_workers=min(2, cpu_cores()), local_crops=2, global_size=64,
                    local_size=32, out_dim=4096,
                    warmup_steps=1, steps=3)
        return cls(**{**base, **overrides})


def train_and_account(loader, step, steps: int, warmup: int, device: torch.device) -> dict:
    """Run ``warmup`` + ``steps`` steps fed by ``loader``; images/s and data-wait share."""
    batches = EpochCycler(loader)
    cuda = device.type == "cuda"
    starts, ends, waits, totals, images = [], [], [], [], 0
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize(device)  # host sync: timed steps start from idle
            t_begin = time.perf_counter()
        t0 = time.perf_counter()
        views, labels = next(batches)
        t1 = time.perf_counter()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        step.run(views)
        if cuda:
            end.record()
        if i >= warmup:
            images += labels.shape[0]
            waits.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
            if cuda:
                starts.append(start)
                ends.append(end)
    if cuda:
        torch.cuda.synchronize(device)  # host sync: the one wait, at the end
        busy = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
        span = starts[0].elapsed_time(ends[-1]) / 1e3  # first step's start to last's end
        wait_share = max(0.0, 1.0 - sum(busy) / span)
        step_stats = summarize(busy)
    else:
        wait_share = sum(waits) / sum(totals)
        step_stats = summarize([t - w for t, w in zip(totals, waits)])
    wall = time.perf_counter() - t_begin
    wait_stats = summarize(waits)
    return {"steps": steps, "images": images, "images_per_s": images / wall,
            "data_wait_share": wait_share, "step_median_ms": step_stats.median * 1e3,
            "step_iqr_ms": step_stats.iqr * 1e3, "fetch_median_ms": wait_stats.median * 1e3,
            "fetch_max_ms": wait_stats.max * 1e3}


def run_trainer(backend: str, path: Path, cfg: E2EConfig, spec, device: torch.device) -> dict:
    """One epoch of ``dino_core.train.train`` capped at ``warmup_steps + steps`` iterations
    (output in a temporary folder, no k-NN, one logging step); its own throughput and
    data-wait accounting, which include the first (warm-up) steps."""
    from dino_core.config import DataConfig, ModelConfig, TrainConfig
    from dino_core.train import train

    total = cfg.warmup_steps + cfg.steps
    with tempfile.TemporaryDirectory(prefix="dino-bench-e2e-run-") as out:
        run_cfg = TrainConfig(
            model=ModelConfig(arch=cfg.arch, patch_size=cfg.patch, out_dim=cfg.out_dim),
            data=DataConfig(path=str(path), backend=backend, batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers, aug=spec),
            epochs=1, max_iters_per_epoch=total, output_dir=out, device=str(device),
            precision=cfg.precision, log_every=total, knn_eval=False, progress=False)
        try:
            summary = train(run_cfg)
        except ImportError as err:  # build_loader: the backend's library or loader is missing
            raise BackendUnavailable(f"ImportError: {err}") from err
    return {"steps": summary["iterations"], "images": summary["iterations"] * cfg.batch_size,
            "images_per_s": summary["images_per_s"],
            "data_wait_share": summary["data_wait_share"], "engine": "dino_core.train.train"}


def run_e2e_benchmark(cfg: E2EConfig, device: torch.device,
                      argv: list[str] | None = None) -> BenchmarkResult:
    """The reference-fed run first, then each requested backend; one row each."""
    from pipelines import AugmentationSpec

    spec = AugmentationSpec(local_crops=cfg.local_crops)
    spec = spec.with_overrides(
        global_views=tuple(replace(v, size=cfg.global_size or v.size) for v in spec.global_views),
        local_view=replace(spec.local_view, size=cfg.local_size or spec.local_view.size))
    shape = StepShape(batch=cfg.batch_size, global_res=snap(spec.global_views[0].size, cfg.patch),
                      local_res=snap(spec.local_view.size, cfg.patch), n_local=cfg.local_crops,
                      out_dim=cfg.out_dim)
    if (shape.global_res, shape.local_res) != (spec.global_views[0].size, spec.local_view.size):
        raise ValueError(f"patch {cfg.patch} does not divide the crop sizes "
                         f"{spec.global_views[0].size}/{spec.local_view.size} of the recipe")

    def measure(backend: str, path: Path) -> dict:
        if cfg.engine == "trainer":
            return run_trainer(backend, path, cfg, spec, device)
        with opened_loader(backend, path, batch_size=cfg.batch_size, spec=spec, device=device,
                           num_workers=cfg.num_workers) as loader:
            step, _ = build_train_step(cfg.arch, cfg.patch, shape, device, cfg.precision)
            stats = train_and_account(loader, step, cfg.steps, cfg.warmup_steps, device)
        return {**stats, "engine": "loop", "loss_impl": step.loss_impl}

    rows, described = for_each_backend(
        cfg.backends, cfg.reference, cfg.data, cfg.backend_data,
        {"device": device.type, "arch": cfg.arch, "patch": cfg.patch,
         "batch_size": cfg.batch_size}, measure, "e2e")
    add_ratios(rows, cfg.reference, {"speedup": "images_per_s"})
    return BenchmarkResult(
        what="e2e", title="End-to-end training throughput and data wait per backend",
        machine=describe_machine(device, argv),
        baseline=f"the same run fed by the `{cfg.reference}` executor, in the same process",
        rows=rows, columns=E2E_COLUMNS, config={**asdict(cfg), "data": described},
        notes=E2E_NOTES + ([] if device.type == "cuda" else [
            "CPU run: the model and the loader workers share the same cores, so the data "
            "wait here says little about a GPU run; GPU figures: not measured yet."]))


E2E_COLUMNS = ["backend", "engine", "device", "arch", "patch", "batch_size", "steps",
               "images_per_s", "speedup", "data_wait_share", "step_median_ms", "fetch_median_ms",
               "status"]
E2E_NOTES = [
    "engine dino_core.train.train: the real trainer (one epoch capped at the steps, its own "
    "accounting, first steps included); engine loop: loader + DINOStep, warm-up excluded, "
    "per-step statistics (step_median_ms, fetch_median_ms).",
    "data_wait_share: the share of the timed steps' time spent waiting for a batch (goal on "
    "a GPU with ViT-S/16: <= 2%). images_per_s: training images per wall-clock second.",
]
E2E_PLOT = PlotSpec(x="backend", group=("backend",), kind="bar",
                    panels=(("training images/s", ("images_per_s",)),
                            ("share of step time waiting for data", ("data_wait_share",))))
