"""``dino-bench pipeline``: multi-crop loader throughput per backend, next to the reference.

Every requested backend of ``pipelines.build_loader`` runs the full recipe of the shared
spec (2 global + N local crops, every photometric op) over the same data (by default the
ImageNet-like benchmark corpus, ``bench_data``), and the reference executor runs right
before them: the ratios in a row are measured against that baseline, not against a figure
from another day. Each backend runs in its own process (``backend_runs``): a backend that
raises, crashes or overruns ``--time-budget`` becomes a row with the reason, and the others
are still measured; the results are written after every backend.

Measured per backend, after warm-up (at least ``warmup_batches`` batches and
``warmup_seconds``): for at least ``batches`` batches and ``seconds`` of wall clock (epochs
are cycled), multi-crop images/s with the device synchronised before the clock stops; the CPU
time of the backend's whole process tree (its threads and loader worker processes) over the
same wall time, hence the cores really used and images per core-second ("per core").
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pipelines.batch import Batch
from pipelines.loader import BACKENDS

from ..harness.runs import (BackendUnavailable, RunLimits, add_ratios, for_each_backend,
                           tree_cpu_seconds)
from ..harness.bench_data import BenchData, DataChoice, prepare_data
from ..harness.timing import (BenchmarkResult, PlotSpec, cpu_cores, describe_machine, summarize,
                      synchronize)

GPU_WORKERS = 8          # the GPU goal is stated for <= 8 CPU threads
START_UP_S = 60.0        # GPU default budget beyond the timed seconds: spawn, imports, JIT
QUICK_CORPUS_IMAGES = 1024


@dataclass(frozen=True)
class PipelineBenchConfig:
    """What the pipeline benchmark runs (see the module docstring for the timing rules)."""

    backends: tuple[str, ...] = tuple(BACKENDS)
    reference: str = "reference"
    source: DataChoice = field(default_factory=DataChoice)
    batch_size: int = 32
    num_workers: int = field(default_factory=cpu_cores)
    local_crops: int = 10
    warmup_batches: int = 3
    batches: int = 20
    warmup_seconds: float = 0.0
    seconds: float = 0.0
    limits: RunLimits = field(default_factory=RunLimits)

    @classmethod
    def quick(cls, **overrides) -> "PipelineBenchConfig":
        """A few small batches of the full recipe over a small corpus: a CPU smoke run."""
        base = dict(batch_size=8, warmup_batches=1, batches=4, num_workers=min(2, cpu_cores()),
                    source=DataChoice(corpus_images=QUICK_CORPUS_IMAGES))
        return cls(**{**base, **overrides})

    @classmethod
    def gpu(cls, **overrides) -> "PipelineBenchConfig":
        """A CUDA device: batches of 128, <= 8 worker threads, 3 s of warm-up, then >= 10 s
        of steady state; a backend still running ``START_UP_S`` after that is killed (so one
        hang cannot eat a time-boxed GPU check)."""
        base = dict(batch_size=128, num_workers=min(GPU_WORKERS, cpu_cores()),
                    warmup_batches=5, warmup_seconds=3.0, batches=5, seconds=10.0)
        cfg = cls(**{**base, **overrides})
        if "limits" in overrides:
            return cfg
        budget = START_UP_S + cfg.warmup_seconds + cfg.seconds
        return replace(cfg, limits=RunLimits(time_budget=budget))


# ----------------------------------------------------------------------------- data
def make_image_folder(root: str | Path, classes: int = 4, per_class: int = 12,
                      size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """Write a small ImageFolder of smooth synthetic JPEGs to ``root`` (for tests that need
    files without the embedded photos).

    Images are bicubic-upsampled random colour fields plus mild noise, so they compress and
    decode like photos rather than like white noise. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w = int(size[0] * rng.uniform(0.8, 1.2))
            h = int(size[1] * rng.uniform(0.8, 1.2))
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg",
                                                                    quality=90)
    return root


def default_data(scratch: Path) -> tuple[Path, str]:
    """The embedded dataset's train split when ``pipelines.embedded`` exists, else a
    synthetic ImageFolder written under ``scratch``. Returns (path, description). (The
    ``feed`` benchmark's default; ``pipeline`` and ``e2e`` read ``bench_data``.)"""
    try:
        embedded = importlib.import_module("pipelines.embedded")
        root = Path(embedded.default_dataset())
        return root / "train", f"embedded default dataset ({root / 'train'})"
    except (ImportError, AttributeError) as err:
        path = make_image_folder(scratch / "synthetic", classes=4, per_class=16)
        return path, (f"synthetic ImageFolder, 64 JPEGs ~500x375 (embedded dataset "
                      f"unavailable: {err})")


@contextlib.contextmanager
def opened_loader(backend: str, path: Path, **loader_kwargs) -> Iterator:
    """``build_loader`` for ``backend`` (shuffled, drop_last, seed 0), closed on exit; any
    failure to build it is raised as ``BackendUnavailable`` with the reason."""
    from pipelines import build_loader

    try:
        loader = build_loader(path, backend=backend, seed=0, shuffle=True, drop_last=True,
                              **loader_kwargs)
    except Exception as err:  # any reason a backend cannot start here is a skip, not a crash
        raise BackendUnavailable(f"{type(err).__name__}: {err}") from err
    try:
        yield loader
    finally:
        loader.close()


# ----------------------------------------------------------------------------- measuring
class EpochCycler:
    """Endless batches from a ``MultiCropLoader``: calls ``set_epoch`` and starts the next
    epoch whenever one ends (a small dataset is read many times)."""

    def __init__(self, loader):
        if len(loader) == 0:
            raise ValueError(f"the loader yields no full batch from {loader.num_samples} samples; "
                             "use a smaller batch size or more data")
        self.loader, self.epoch = loader, 0
        loader.set_epoch(0)
        self._it = iter(loader)

    def __next__(self) -> Batch:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self._it = iter(self.loader)
            return next(self._it)


def measure_loader(loader, device: torch.device, batches: int, warmup: int,
                   seconds: float = 0.0, warmup_seconds: float = 0.0) -> dict:
    """Warm up for >= ``warmup`` batches and >= ``warmup_seconds``, then time >= ``batches``
    batches and >= ``seconds`` of wall clock (crossing epochs as needed)."""
    cycler = EpochCycler(loader)
    t_warm, n = time.perf_counter(), 0
    while n < warmup or time.perf_counter() - t_warm < warmup_seconds:
        cycler.__next__()
        n += 1
    synchronize(device)  # host sync: start the clock with no queued work
    epoch0, cpu0, t0 = cycler.epoch, tree_cpu_seconds(), time.perf_counter()
    images, per_batch = 0, []
    while len(per_batch) < batches or time.perf_counter() - t0 < seconds:
        tb = time.perf_counter()
        batch = cycler.__next__()
        images += batch.size
        per_batch.append(time.perf_counter() - tb)
    # host sync: a batch is handed over while its GPU work (decode, crops, photometric
    # kernel, on DALI's stream or ours) may still be queued; torch.cuda.synchronize waits
    # for every stream of the device, so the clock stops once the last views really exist.
    synchronize(device)
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    stats = summarize(per_batch)
    views = batch.views
    return {"images": images, "batches": len(per_batch), "epochs": cycler.epoch - epoch0 + 1,
            "wall_s": wall, "cpu_s": cpu, "images_per_s": images / wall,
            "cores_used": cpu / wall, "images_per_core_s": images / max(cpu, 1e-9),
            "batch_median_ms": stats.median * 1e3, "batch_iqr_ms": stats.iqr * 1e3,
            "views": len(views), "view_shapes": " ".join("x".join(map(str, v.shape[1:]))
                                                         for v in views[:: max(1, len(views) - 1)])}


def measure_backend(backend: str, path: Path, cfg: PipelineBenchConfig, spec,
                    device: torch.device) -> dict:
    """One backend's row fields (runs in the backend's own process)."""
    with opened_loader(backend, path, batch_size=cfg.batch_size, spec=spec, device=device,
                       num_workers=cfg.num_workers) as loader:
        return measure_loader(loader, device, cfg.batches, cfg.warmup_batches, cfg.seconds,
                              cfg.warmup_seconds)


def backend_order(backends: tuple[str, ...], reference: str) -> list[str]:
    """The reference first (the baseline), then the others in the order given."""
    return [reference] + [b for b in dict.fromkeys(backends) if b != reference]


def run_pipeline_benchmark(cfg: PipelineBenchConfig, device: torch.device,
                           argv: list[str] | None = None,
                           on_partial: Callable[[BenchmarkResult], None] | None = None
                           ) -> BenchmarkResult:
    """Reference first, then every other requested backend; a row each (skips and failures
    included). ``on_partial(result so far)`` runs after every backend."""
    from pipelines import AugmentationSpec

    spec = AugmentationSpec(local_crops=cfg.local_crops)
    with tempfile.TemporaryDirectory(prefix="dino-bench-pipeline-") as tmp:
        data = prepare_data(cfg.source, Path(tmp))
        order = backend_order(cfg.backends, cfg.reference)
        path_for = data.resolve(order)  # first: builders fork before CUDA starts here
        machine = describe_machine(device, argv)

        def result(rows: list[dict]) -> BenchmarkResult:
            rows = [dict(r) for r in rows]
            add_ratios(rows, cfg.reference, {"speedup": "images_per_s",
                                             "speedup_per_core": "images_per_core_s"})
            return pipeline_result(cfg, spec, device, machine, data, rows)

        rows = for_each_backend(
            order,
            {"device": device.type, "batch_size": cfg.batch_size, "num_workers": cfg.num_workers},
            path_for, functools.partial(measure_backend, cfg=cfg, spec=spec, device=device),
            "pipeline", cfg.limits,
            on_row=(lambda rows: on_partial(result(rows))) if on_partial else None)
        return result(rows)


def pipeline_result(cfg: PipelineBenchConfig, spec, device: torch.device, machine,
                    data: BenchData, rows: list[dict]) -> BenchmarkResult:
    settings = {k: v for k, v in asdict(cfg).items() if k != "source"}  # data: see below
    return BenchmarkResult(
        what="pipeline", title="Multi-crop pipeline throughput per backend", machine=machine,
        baseline=f"the `{cfg.reference}` executor (PIL, full recipe) in the same run; "
        "speedup columns are ratios to it", rows=rows, columns=PIPELINE_COLUMNS,
        config={**settings, "views": spec.num_views, "data": data.kind}, **data.result_fields(),
        notes=[summary_line(rows, cfg.reference)] + data.notes() + pipeline_notes(spec, device))


PIPELINE_COLUMNS = ["backend", "device", "batch_size", "num_workers", "images_per_s",
                    "cores_used", "images_per_core_s", "speedup", "speedup_per_core",
                    "wall_s", "epochs", "batch_median_ms", "batch_iqr_ms", "status"]

PIPELINE_PLOT = PlotSpec(x="backend", group=("backend",), kind="bar",
                         panels=(("multi-crop images/s", ("images_per_s",)),
                                 ("images per core-second", ("images_per_core_s",))))


def summary_line(rows: list[dict], reference: str) -> str:
    """One sentence a reader can take away: each backend's per-core ratio to the reference."""
    base = next((r for r in rows if r["backend"] == reference and r.get("status") == "ok"), None)
    if base is None:
        return f"In this run the `{reference}` baseline did not run; no ratio can be given."
    parts = [f"{r['backend']} {r['speedup_per_core']:.2f}x" for r in rows
             if r is not base and "speedup_per_core" in r]
    missing = [r["backend"] for r in rows if r.get("status", "ok") != "ok"]
    text = (f"In this run: reference {base['images_per_core_s']:.1f} images per core-second"
            + (f"; per core vs reference: {', '.join(parts)} (goal >= 4x)" if parts else ""))
    return text + (f"; not measured: {', '.join(missing)} (see status)." if missing else ".")


def pipeline_notes(spec, device: torch.device) -> list[str]:
    notes = [f"Full recipe of the shared spec: {spec.num_global} global views at "
             f"{spec.global_views[0].size} px + {spec.local_crops} local views at "
             f"{spec.local_view.size} px per image, every photometric op, normalised float "
             "tensors on the device.",
             "images_per_s is wall-clock over the timed batches (after warm-up; on a GPU the "
             "device is synchronised before the clock stops); cores_used is CPU seconds of the "
             "backend's whole process tree (its threads and loader workers) per wall second; "
             "images_per_core_s = images / CPU seconds (the per-core figure). Each backend runs "
             "in its own process; epochs counts the epochs the timed window touched.",
             "This machine is shared: compare ratios within one run, not absolute figures across "
             "runs."]
    if device.type != "cuda":
        notes.append("GPU pipeline figures (DALI mixed decode, goal >= 8,000 images/s on "
                     "H100/H200): not measured yet (no GPU on this machine).")
    return notes
