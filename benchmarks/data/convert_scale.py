"""``dino-bench convert --images N``: does ``dino-convert`` stay flat as the corpus grows?

The corpus (or ``--data``) is replicated to ``base`` and to ``N`` images under new names
(``<class>/<copy>_<name>``, hard links where the file system allows, else copies), and each
format is converted as a user runs it (one process, start to exit, ``convert_process``):

- at ``base`` images with 1 worker and with ``workers`` workers (the measured scaling);
- at ``N`` images with ``workers`` workers.

Each row has images/s and the peak memory of the converter and all its workers (psutil,
sampled: the tree's summed PSS, each physical page once, ``convert_process``; summed RSS,
which counts the pages workers share with their parent once per process, is the extra
column ``peak_rss_mb``); ``rate_vs_base`` and ``memory_vs_base`` compare ``N`` with ``base``
at the same worker count (flat means within 10%: both near 1.0).

``projection`` turns the measured per-core rate and scaling into the time to convert
ImageNet-1k train (1,281,167 images) at 16 and 64 cores; ``projection_notes`` say what that
assumes. Replicated files are the same bytes, so after the first copy they are read from the
page cache: the check isolates the converter's own scaling from the storage's.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..harness.bench_data import DataChoice, measure_on_data
from ..harness.timing import BenchmarkResult, PlotSpec
from .convert_process import converter_command, run_process

IMAGENET_TRAIN = 1_281_167
PROJECT_CORES = (16, 64)
SCALE_COLUMNS = ["format", "images", "workers", "seconds", "images_per_s",
                 "images_per_core_s", "cpu_ms_per_image", "peak_mb", "peak_rss_mb",
                 "output_mb", "rate_vs_base", "cpu_vs_base", "memory_vs_base"]


@dataclass(frozen=True)
class ScaleConfig:
    """Convert ``base`` and ``images`` replicated images with ``workers`` workers (and
    ``base`` with 1 worker, for the scaling) in each of ``formats``."""

    images: int
    base: int = 10_000
    workers: int = 2
    formats: tuple[str, ...] = ("ffcv", "wds")
    max_side: int = 500
    quality: int = 90
    scratch: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.base <= self.images:
            raise ValueError(f"--images ({self.images}) must be at least the base size "
                             f"({self.base}), which must be >= 1")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


def replicate(src: Path, dst: Path, n: int) -> Path:
    """An ImageFolder at ``dst`` with ``n`` images: ``src``'s files in sorted order, cycled,
    copy k of a file named ``<class>/<k:04d>_<name>`` (hard link, or a copy where linking
    fails, e.g. across file systems). Returns ``dst``."""
    from pipelines.folder import scan_image_folder

    found = scan_image_folder(src)
    samples = [Path(p) for p, _ in found.samples]
    if not samples:
        raise ValueError(f"{src}: no images to replicate")
    for i in range(n):
        path = samples[i % len(samples)]
        target = dst / path.parent.name / f"{i // len(samples):04d}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return dst


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _convert_row(fmt: str, src: Path, out: Path, images: int, workers: int,
                 cfg: ScaleConfig) -> dict:
    out.mkdir(parents=True)
    run = run_process(converter_command(f"dino-convert {fmt}", src, out, workers,
                                        cfg.max_side, cfg.quality))
    mb = _folder_mb(out)
    shutil.rmtree(out)
    return {"format": fmt, "images": images, "workers": workers,
            "seconds": round(run.seconds, 3), "images_per_s": round(images / run.seconds, 1),
            "images_per_core_s": round(images / run.seconds / workers, 1),
            "cpu_ms_per_image": round(1e3 * run.cpu_s / images, 4),
            "peak_mb": round(run.peak_mb, 1), "peak_rss_mb": round(run.peak_rss_mb, 1),
            "memory": run.memory, "output_mb": round(mb, 3)}


def measure_scale(src: Path, cfg: ScaleConfig, log=print) -> list[dict]:
    """The rows (see the module docstring), in format order: base at 1 worker, base and N
    at ``workers``."""
    scratch = Path(tempfile.mkdtemp(prefix="dino-bench-scale-", dir=cfg.scratch))
    rows = []
    try:
        sizes = {cfg.base: replicate(src, scratch / f"in-{cfg.base}", cfg.base)}
        if cfg.images != cfg.base:
            sizes[cfg.images] = replicate(src, scratch / f"in-{cfg.images}", cfg.images)
        plan = [(cfg.base, 1)] * (cfg.workers != 1) + [(n, cfg.workers) for n in sizes]
        for fmt in cfg.formats:
            for n, w in plan:
                row = _convert_row(fmt, sizes[n], scratch / "out", n, w, cfg)
                log(f"dino-convert {fmt} {n} images, {w} worker(s): {row['seconds']:.1f} s, "
                    f"{row['images_per_s']:.0f} img/s, peak {row['peak_mb']:.0f} MB")
                rows.append(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for r in rows:
        base = next(b for b in rows if b["format"] == r["format"] and b["images"] == cfg.base
                    and b["workers"] == r["workers"])
        r["rate_vs_base"] = round(r["images_per_s"] / base["images_per_s"], 3)
        r["cpu_vs_base"] = round(r["cpu_ms_per_image"] / base["cpu_ms_per_image"], 3)
        r["memory_vs_base"] = round(r["peak_mb"] / base["peak_mb"], 3)
    return rows


def projection(rows: list[dict], cfg: ScaleConfig) -> list[dict]:
    """ImageNet-1k train conversion time per format at ``PROJECT_CORES`` cores.

    per-core rate r = images/s per worker at ``images`` with ``workers`` workers (the
    sustained rate, its measured scaling loss included); e = that per-core rate over the
    1-worker rate at ``base`` (1.0 when only one worker count was run). Two bounds:
    ``hours_flat`` assumes the per-core rate holds from ``workers`` up to C cores;
    ``hours_compound`` assumes the efficiency e is lost again at every doubling of workers
    beyond ``workers`` (rate r * e ** log2(C / workers) per core). ``storage_mb_s`` is the
    read (and about the same write) bandwidth the flat case needs."""
    out = []
    for fmt in cfg.formats:
        big = next(r for r in rows if r["format"] == fmt and r["images"] == cfg.images
                   and r["workers"] == cfg.workers)
        one = next((r for r in rows if r["format"] == fmt and r["workers"] == 1), None)
        per_core = big["images_per_core_s"]
        eff = min(1.0, per_core / one["images_per_core_s"]) if one and cfg.workers > 1 else 1.0
        mb_per_image = big["output_mb"] / big["images"]
        for cores in PROJECT_CORES:
            compound = per_core * eff ** max(0.0, math.log2(cores / cfg.workers))
            out.append({"format": fmt, "cores": cores, "per_core_images_s": per_core,
                        "efficiency_per_doubling": round(eff, 3),
                        "hours_flat": round(IMAGENET_TRAIN / (per_core * cores) / 3600, 3),
                        "hours_compound": round(IMAGENET_TRAIN / (compound * cores) / 3600,
                                                3),
                        "storage_mb_s": round(per_core * cores * mb_per_image, 1)})
    return out


def projection_notes(proj: list[dict], cfg: ScaleConfig) -> list[str]:
    """One line per projected row and the assumptions, for a results file."""
    lines = [f"ImageNet-1k train ({IMAGENET_TRAIN:,} images) with dino-convert --format "
             f"{p['format']} on {p['cores']} cores: {p['hours_flat'] * 60:.1f} min if the "
             f"per-core rate measured at {cfg.workers} workers and {cfg.images:,} images "
             f"({p['per_core_images_s']:.0f} images/s) holds, {p['hours_compound'] * 60:.1f} "
             f"min if the measured 1 -> {cfg.workers} worker efficiency "
             f"({p['efficiency_per_doubling']:.2f}) is lost again at every doubling; needs "
             f"~{p['storage_mb_s']:.0f} MB/s of reads and as much of writes" for p in proj]
    lines.append(
        "The projection assumes: ImageNet's files are like the corpus's (size, share of "
        "JPEGs that are re-encoded because they are larger than --max-side, CMYK or "
        "grayscale: the corpus has the large outliers ImageNet has); one worker per core with "
        "nothing else running; the storage keeps up with the bandwidth above (here the "
        "replicated files were read from the page cache, so storage was not measured); the "
        "main process (ordering the per-image records, writing the index) stays off the "
        "critical path at that many workers, as it does at the measured counts.")
    return lines


def is_flat(row: dict, tolerance: float = 0.1) -> bool:
    """Rate and peak memory within ``tolerance`` of the base size's."""
    return (abs(row["rate_vs_base"] - 1) <= tolerance
            and abs(row["memory_vs_base"] - 1) <= tolerance)


SCALE_PLOT = PlotSpec(x="images", group=("format", "workers"), kind="line", xlabel="images",
                      panels=(("images/s", ("images_per_s",)), ("peak MB", ("peak_mb",))))


def run_scale_benchmark(source: DataChoice, cfg: ScaleConfig, machine) -> BenchmarkResult:
    """The ``--images N`` run: rows, projection and its assumptions as a result."""
    data, rows, load = measure_on_data(source, lambda root: measure_scale(root, cfg))
    measures = {r["memory"] for r in rows}
    flat = [f"dino-convert {r['format']} at {r['images']:,} vs {cfg.base:,} images, "
            f"{r['workers']} workers: images/s x{r['rate_vs_base']:.3f}, peak memory "
            f"x{r['memory_vs_base']:.3f} (flat, both within 10% of 1: "
            f"{'yes' if is_flat(r) else 'NO'}); CPU per image x{r['cpu_vs_base']:.3f}"
            for r in rows if r["images"] == cfg.images and cfg.images != cfg.base]
    return BenchmarkResult(
        what="convert_scale", title="dino-convert at scale: images/s and peak memory, "
        f"{cfg.base:,} vs {cfg.images:,} images", machine=machine,
        baseline=f"the same converter at {cfg.base:,} images and the same worker count",
        rows=rows, columns=SCALE_COLUMNS,
        config={k: v for k, v in asdict(cfg).items()}, **data.result_fields(),
        notes=flat + projection_notes(projection(rows, cfg), cfg) + [
            "Each row is one process from start to exit (`python -m pipelines.convert.cli "
            "--format F --workers W --no-verify --no-progress`), interpreter start and "
            "fsync included; peak_mb is the peak memory of the converter and all its workers "
            "(psutil, sampled every 50 ms): "
            + ("the PSS (proportional set size) summed over the processes, so a page a worker "
               "shares with its parent counts once" if measures == {"pss"} else
               "RSS summed over the processes (PSS could not be read here), so a page a "
               "worker shares with its parent counts once per process")
            + "; peak_rss_mb is the summed RSS (pages shared with the parent counted in every "
            "worker again), for comparison with earlier results, which used it. "
            "cpu_ms_per_image: CPU seconds of the process and its workers (user + system, "
            "getrusage of the reaped children) per image; cpu_vs_base compares it with the "
            "base size's: the converter's own work per image. When it stays near 1 while "
            "images/s drops, the drop is time spent waiting (e.g. the page cache writing "
            "back a 100k run's ~9 GB of output to the disk), not work that grows.",
            f"Inputs: the corpus replicated under new names (hard links): {cfg.base:,} and "
            f"{cfg.images:,} images.",
load])
