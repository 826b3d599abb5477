"""``dino-bench pipeline``: multi-crop loader throughput per backend, next to the reference.

Every requested backend of ``pipelines.build_loader`` runs the full recipe of the shared
spec (2 global + N local crops, every photometric op) over the same data, and the reference
executor runs in the same process right before them: the ratios in a row are measured
against that baseline, not against a figure from another day.

Measured per backend, after warm-up batches: wall-clock multi-crop images/s; the CPU time
of the whole process tree (main process, its threads and loader worker processes) spent
meanwhile, hence the cores really used and images per core-second ("per core"). A backend
whose library or loader is missing, or that cannot read the data, is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil
import torch
from PIL import Image

from .harness import (BenchmarkResult, PlotSpec, cpu_cores, describe_machine, summarize,
                      synchronize)


@dataclass(frozen=True)
class PipelineBenchConfig:
    """What the pipeline benchmark runs. ``backend_data`` maps a backend to its own copy of
    the dataset (e.g. ``ffcv`` -> a ``.beton``); others read ``data``."""

    backends: tuple[str, ...] = ("reference", "dali", "ffcv")
    reference: str = "reference"
    data: str | None = None
    backend_data: dict[str, str] = field(default_factory=dict)
    batch_size: int = 32
    num_workers: int = field(default_factory=cpu_cores)
    local_crops: int = 10
    warmup_batches: int = 3
    batches: int = 20

    @classmethod
    def quick(cls, **overrides) -> "PipelineBenchConfig":
        """A few small batches of the full recipe: a CPU-sized smoke run."""
        base = dict(batch_size=8, warmup_batches=1, batches=4, num_workers=min(2, cpu_cores()))
        return cls(**{**base, **overrides})


# ----------------------------------------------------------------------------- data
def make_image_folder(root: str | Path, classes: int = 4, per_class: int = 12,
                      size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """Write a small ImageFolder of smooth synthetic JPEGs (ImageNet-like sizes) to ``root``.

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
    synthetic ImageFolder written under ``scratch``. Returns (path, description)."""
    try:
        embedded = importlib.import_module("pipelines.embedded")
        root = Path(embedded.default_dataset())
        return root / "train", f"embedded default dataset ({root / 'train'})"
    except (ImportError, AttributeError) as err:
        path = make_image_folder(scratch / "synthetic", classes=4, per_class=16)
        return path, (f"synthetic ImageFolder, 64 JPEGs ~500x375 (embedded dataset "
                      f"unavailable: {err})")


def prepare_backend_data(backend: str, data: Path, backend_data: dict[str, str],
                         scratch: Path) -> Path:
    """The path ``backend`` should read: an explicit ``backend_data`` entry; for ffcv given an
    ImageFolder, a ``.beton`` converted into ``scratch`` with ``dino-convert`` when that
    converter exists (conversion time is not counted); otherwise ``data`` itself."""
    if backend in backend_data:
        return Path(backend_data[backend])
    if backend == "ffcv" and data.is_dir():
        try:
            beton = importlib.import_module("pipelines.convert.beton")
            from pipelines.convert.common import ConvertConfig
        except ImportError:
            return data
        dst = scratch / "ffcv"
        beton.convert(ConvertConfig(src=data, dst=dst, format="ffcv", progress=False))
        found = sorted(dst.glob("*.beton"))
        return found[0] if found else data
    return data


class BackendUnavailable(Exception):
    """A backend that cannot run here (library or loader missing, data it cannot read)."""


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
def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its threads, and its live and reaped
    child processes (loader workers)."""
    proc = psutil.Process()
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:  # exited in between
            continue
    return total


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

    def __next__(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self._it = iter(self.loader)
            return next(self._it)


def measure_loader(loader, batches: int, warmup: int, device: torch.device) -> dict:
    """Iterate ``warmup`` + ``batches`` batches (crossing epochs if needed) and time them."""
    next_batch = EpochCycler(loader).__next__
    for _ in range(warmup):
        next_batch()
    synchronize(device)  # host sync: start the clock with no queued work
    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    images, per_batch = 0, []
    for _ in range(batches):
        tb = time.perf_counter()
        views, labels = next_batch()
        images += labels.shape[0]
        per_batch.append(time.perf_counter() - tb)
    synchronize(device)  # host sync: the batches must really be on the device
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    stats = summarize(per_batch)
    return {"images": images, "wall_s": wall, "cpu_s": cpu, "images_per_s": images / wall,
            "cores_used": cpu / wall, "images_per_core_s": images / max(cpu, 1e-9),
            "batch_median_ms": stats.median * 1e3, "batch_iqr_ms": stats.iqr * 1e3,
            "views": len(views), "view_shapes": " ".join("x".join(map(str, v.shape[1:]))
                                                         for v in views[:: max(1, len(views) - 1)])}


def for_each_backend(backends: tuple[str, ...], reference: str, data: str | None,
                     backend_data: dict[str, str], base_row: dict,
                     measure: Callable[[str, Path], dict], tag: str) -> tuple[list[dict], str]:
    """The reference backend first, then every other one: ``measure(backend, path)`` with the
    path that backend reads. Returns a row per backend (skips and failures included, the
    reason in ``status``) and a description of the data."""
    order = [reference] + [b for b in backends if b != reference]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=f"dino-bench-{tag}-") as tmp:
        scratch = Path(tmp)
        root, described = (Path(data), str(data)) if data else default_data(scratch)
        for backend in order:
            row = {"backend": backend, **base_row}
            try:
                try:
                    path = prepare_backend_data(backend, root, backend_data, scratch)
                except Exception as err:  # e.g. the converter for this backend is missing
                    raise BackendUnavailable(f"{type(err).__name__}: {err}") from err
                row.update(measure(backend, path))
                row["status"] = "ok"
            except BackendUnavailable as err:
                row["status"] = f"skipped: {err}"[:300]
            except Exception as err:  # reported in the row; the other backends still run
                row["status"] = f"failed: {type(err).__name__}: {err}"[:300]
            print(f"[{tag}] {backend}: {row.get('images_per_s', 0):.2f} images/s "
                  f"({row['status']})", flush=True)
            rows.append(row)
    return rows, described


def add_ratios(rows: list[dict], reference: str, ratios: dict[str, str]) -> None:
    """For every measured row, ``row[name] = row[column] / reference_row[column]``."""
    base = next((r for r in rows if r["backend"] == reference and r.get("status") == "ok"), None)
    for r in rows:
        if base is not None and r.get("status") == "ok":
            for name, column in ratios.items():
                r[name] = r[column] / base[column]


def run_pipeline_benchmark(cfg: PipelineBenchConfig, device: torch.device,
                           argv: list[str] | None = None) -> BenchmarkResult:
    """Reference first, then every other requested backend; a row each (skips included)."""
    from pipelines import AugmentationSpec

    spec = AugmentationSpec(local_crops=cfg.local_crops)

    def measure(backend: str, path: Path) -> dict:
        with opened_loader(backend, path, batch_size=cfg.batch_size, spec=spec, device=device,
                           num_workers=cfg.num_workers) as loader:
            return measure_loader(loader, cfg.batches, cfg.warmup_batches, device)

    rows, described = for_each_backend(
        cfg.backends, cfg.reference, cfg.data, cfg.backend_data,
        {"device": device.type, "batch_size": cfg.batch_size, "num_workers": cfg.num_workers},
        measure, "pipeline")
    add_ratios(rows, cfg.reference, {"speedup": "images_per_s",
                                     "speedup_per_core": "images_per_core_s"})
    return BenchmarkResult(
        what="pipeline", title="Multi-crop pipeline throughput per backend",
        machine=describe_machine(device, argv),
        baseline=f"the `{cfg.reference}` executor (PIL, full recipe) in the same run; "
        "speedup columns are ratios to it",
        rows=rows, columns=PIPELINE_COLUMNS, config={**asdict(cfg), "data": described,
                                                      "views": spec.num_views},
        notes=[summary_line(rows, cfg.reference)] + pipeline_notes(spec, device))


PIPELINE_COLUMNS = ["backend", "device", "batch_size", "num_workers", "images_per_s",
                    "cores_used", "images_per_core_s", "speedup", "speedup_per_core",
                    "batch_median_ms", "batch_iqr_ms", "status"]

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
    skipped = [r["backend"] for r in rows if r.get("status", "").startswith("skipped")]
    text = (f"In this run: reference {base['images_per_core_s']:.1f} images per core-second"
            + (f"; per core vs reference: {', '.join(parts)} (goal >= 4x)" if parts else ""))
    return text + (f"; skipped: {', '.join(skipped)} (see status)." if skipped else ".")


def pipeline_notes(spec, device: torch.device) -> list[str]:
    notes = [f"Full recipe of the shared spec: {spec.num_global} global views at "
             f"{spec.global_views[0].size} px + {spec.local_crops} local views at "
             f"{spec.local_view.size} px per image, every photometric op, normalised float "
             "tensors on the device.",
             "images_per_s is wall-clock over the timed batches (after warm-up); cores_used is "
             "CPU seconds of the whole process tree (main process, threads, loader workers) per "
             "wall second; images_per_core_s = images / CPU seconds (the per-core figure).",
             "This machine is shared: compare ratios within one run, not absolute figures across "
             "runs. The design notes measured the reference at about 48 images/s per core."]
    if device.type != "cuda":
        notes.append("GPU pipeline figures (DALI mixed decode, goal >= 8,000 images/s on "
                     "H100/H200): not measured yet (no GPU on this machine).")
    return notes
