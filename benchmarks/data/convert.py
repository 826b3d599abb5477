"""``dino-bench convert``: ``dino-convert`` images/s per core next to FFCV's own writer.

On the ImageNet-like corpus (or ``--data``), with the same worker count, the same longer-side
limit and JPEG quality, in one run, for each worker count (default 1 and 2):

- ``ffcv-writer``: FFCV's ``DatasetWriter`` with ``RGBImageField(write_mode="jpg",
  max_resolution=max_side, jpeg_quality=quality)`` and ``IntField``, fed the way FFCV's
  ImageNet example feeds it: an indexable dataset that opens each file with PIL as RGB;
- ``dino-convert ffcv`` and ``dino-convert wds`` (``--no-verify``: the conversion alone;
  the verify step is a separate read-back whose cost is in the ``verify_s`` column).

Each converter writes to a fresh folder under ``scratch`` that is deleted afterwards; the
order of converters is rotated between repeats and the median of ``repeats`` runs is
reported. ``cpu_s`` is the CPU time (user + system) of the converter's process tree.
``images_per_core_s`` is images/s divided by the worker count (each converter is
given that many processes; on a machine with that many idle cores that is the cores used);
``speedup_per_core`` is the ratio to the FFCV writer at the same worker count; ``scaling``
is images/s at this worker count over images/s of the same converter at the first one.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..harness.bench_data import DataChoice, prepare_data
from ..harness.timing import BenchmarkResult, PlotSpec

CONVERTERS = ("ffcv-writer", "dino-convert ffcv", "dino-convert wds")
COLUMNS = ["converter", "workers", "images", "seconds", "images_per_s", "images_per_core_s",
           "speedup_per_core", "scaling", "cpu_s", "images_per_cpu_s", "speedup_per_cpu_s",
           "verify_s", "output_mb", "runs_s"]
CONVERT_PLOT = PlotSpec(x="workers", group=("converter",), kind="line", xlabel="workers",
                        panels=(("images/s", ("images_per_s",)),
                                ("images per core-second", ("images_per_core_s",))))
GOALS = {"dino-convert ffcv": 1.5, "dino-convert wds": 3.0}


@dataclass(frozen=True)
class ConvertBenchConfig:
    source: DataChoice = field(default_factory=DataChoice)
    workers: tuple[int, ...] = (1, 2)
    max_side: int = 500
    quality: int = 90
    repeats: int = 1
    scratch: str | None = None   # where outputs go (default: the system temp folder)
    verify: bool = True          # also time --verify of our outputs (verify_s)


class _FolderImages:
    """What FFCV's ImageNet example hands its writer: item i -> (PIL RGB image, label)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            return im.convert("RGB"), label


def run_ffcv_writer(src: Path, out: Path, workers: int, max_side: int, quality: int) -> int:
    """FFCV's own DatasetWriter over the ImageFolder ``src``; returns the images written."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from tqdm import tqdm

    from pipelines.folder import scan_image_folder

    samples = scan_image_folder(src).samples
    writer = ffcv.writer.DatasetWriter(
        str(out / "ffcv-writer.beton"),
        {"image": RGBImageField(write_mode="jpg", max_resolution=max_side,
                                jpeg_quality=quality), "label": IntField()},
        num_workers=workers)
    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = lambda *a, **k: tqdm(*a, **k, disable=True)
    try:
        writer.from_indexed_dataset(_FolderImages(samples), chunksize=100)
    finally:
        ffcv.writer.tqdm = original
    return len(samples)


def run_dino_convert(fmt: str, src: Path, out: Path, workers: int, max_side: int,
                     quality: int) -> int:
    from pipelines.convert.common import ConvertConfig
    from pipelines.convert.cli import CONVERTERS as OURS

    cfg = ConvertConfig(src=src, dst=out, format=fmt, max_side=max_side, jpeg_quality=quality,
                        workers=workers, progress=False, verify=False)
    return OURS[fmt](cfg).num_samples


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (the
    converters' worker processes, reaped here first)."""
    import multiprocessing
    import resource

    multiprocessing.active_children()  # joins finished workers, so their time counts
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _timed(name: str, src: Path, out: Path, workers: int, cfg: ConvertBenchConfig
           ) -> tuple[float, int, float, float, float]:
    """(seconds, images, output MB, verify seconds, CPU seconds) of one converter run."""
    out.mkdir(parents=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    if name == "ffcv-writer":
        n = run_ffcv_writer(src, out, workers, cfg.max_side, cfg.quality)
    else:
        n = run_dino_convert(name.split()[-1], src, out, workers, cfg.max_side, cfg.quality)
    seconds = time.perf_counter() - t0
    time.sleep(0.2)  # FFCV's writer does not join its processes: let them end and be reaped
    cpu = cpu_seconds() - c0
    mb = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    verify_s = float("nan")
    if cfg.verify and name != "ffcv-writer":
        from pipelines.convert.verify import verify_output
        t1 = time.perf_counter()
        verify_output(out, workers=workers)
        verify_s = time.perf_counter() - t1
    shutil.rmtree(out)
    return seconds, n, mb, verify_s, cpu


def measure(src: Path, cfg: ConvertBenchConfig, log=print) -> list[dict]:
    import ffcv.fields  # noqa: F401  (imports are start-up, not conversion: done before)
    import ffcv.writer  # noqa: F401

    import pipelines.convert.beton  # noqa: F401
    import pipelines.convert.wds  # noqa: F401
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="dino-bench-convert-", dir=cfg.scratch))
    try:
        runs: dict[tuple[str, int], list[tuple[float, int, float, float, float]]] = {}
        for rep in range(cfg.repeats):
            for w in cfg.workers:
                k = rep % len(CONVERTERS)  # rotated, so no converter always runs first
                order = CONVERTERS[k:] + CONVERTERS[:k]
                for name in order:
                    out = scratch / f"{name.replace(' ', '-')}-{w}-{rep}"
                    r = _timed(name, src, out, w, cfg)
                    runs.setdefault((name, w), []).append(r)
                    log(f"{name} workers={w} run {rep + 1}: {r[0]:.2f} s, {r[1] / r[0]:.0f} img/s")
        for (name, w), rs in runs.items():
            secs = statistics.median(r[0] for r in rs)
            n = rs[0][1]
            rows.append({"converter": name, "workers": w, "images": n, "seconds": round(secs, 3),
                         "images_per_s": round(n / secs, 1),
                         "images_per_core_s": round(n / secs / w, 1),
                         "verify_s": round(statistics.median(r[3] for r in rs), 3),
                         "cpu_s": round(statistics.median(r[4] for r in rs), 3),
                         "images_per_cpu_s": round(n / statistics.median(r[4] for r in rs), 1),
                         "output_mb": round(rs[0][2], 1),
                         "runs_s": " ".join(f"{r[0]:.2f}" for r in rs)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    by = {(r["converter"], r["workers"]): r for r in rows}
    for r in rows:
        base = by.get(("ffcv-writer", r["workers"]))
        first = by.get((r["converter"], cfg.workers[0]))
        r["speedup_per_core"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["scaling"] = round(r["images_per_s"] / first["images_per_s"], 2)
        r["speedup_per_cpu_s"] = round(r["images_per_cpu_s"] / base["images_per_cpu_s"], 2)
    rows.sort(key=lambda r: (CONVERTERS.index(r["converter"]), r["workers"]))
    return rows


def summary(rows: list[dict], workers: tuple[int, ...]) -> list[str]:
    out = []
    for name, goal in GOALS.items():
        parts = [f"{r['speedup_per_core']:.2f}x at {r['workers']} worker(s)"
                 for r in rows if r["converter"] == name]
        scale = [f"{r['scaling']:.2f}" for r in rows if r["converter"] == name
                 and r["workers"] != workers[0]]
        speed_ok = all(r["speedup_per_core"] >= goal for r in rows if r["converter"] == name)
        out.append(f"{name}: per core vs FFCV's writer {', '.join(parts)} (goal >= {goal}x: "
                   f"{'met' if speed_ok else 'MISSED'}); scaling {workers[0]} -> "
                   f"{workers[-1]} workers: {', '.join(scale) or '-'} (ideal "
                   f"{workers[-1] / workers[0]:.1f}; FFCV's writer: "
                   + ", ".join(f"{r['scaling']:.2f}" for r in rows if r["converter"] ==
                               "ffcv-writer" and r["workers"] != workers[0]) + ")")
    return out


def run_convert_benchmark(cfg: ConvertBenchConfig, machine) -> BenchmarkResult:
    scratch = Path(tempfile.mkdtemp(prefix="dino-bench-data-"))
    data = prepare_data(cfg.source, scratch, progress=True)
    load_before = os.getloadavg()
    rows = measure(Path(data.root), cfg)
    load_after = os.getloadavg()
    shutil.rmtree(scratch, ignore_errors=True)
    settings = {k: v for k, v in asdict(cfg).items() if k != "source"}
    return BenchmarkResult(
        what="convert", title="Conversion images/s per core: dino-convert vs FFCV's writer",
        machine=machine, baseline="FFCV's own DatasetWriter (RGBImageField jpg, same "
        "max_resolution and quality, same worker count) in the same run",
        rows=rows, columns=COLUMNS, config=settings, **data.result_fields(),
        notes=summary(rows, cfg.workers) + [
            "seconds: wall time of the conversion alone (median of the repeats; runs_s lists "
            "them); dino-convert ran with --no-verify; verify_s is its read-back check run "
            "afterwards (a full decode of every stored image with the format's own reader)"
            + ("." if cfg.verify else ", not measured in this run (--no-verify)."),
            f"machine load average (1/5/15 min) before: "
            f"{' '.join(f'{v:.2f}' for v in load_before)}, after: "
            f"{' '.join(f'{v:.2f}' for v in load_after)} (other processes' load competes "
            "for the same cores).",
            "images_per_core_s = images/s / workers (wall clock: on a shared machine another "
            "process's load lowers it and the scaling); cpu_s = CPU seconds of the converter's "
            "process and its workers (user + system), images_per_cpu_s and speedup_per_cpu_s "
            "on that basis, which other load barely moves."])
