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

Each run is timed twice: in-process (``seconds``: the conversion call, imports done first)
and as a process of its own from start to exit (``process_s``, ``convert_process``), the
way a user times it; ``process_speedup`` compares whole processes. ``--images N`` is the
scale check instead (``convert_scale``).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..harness.bench_data import DataChoice, measure_on_data
from ..harness.timing import BenchmarkResult, PlotSpec
from .convert_process import converter_command, run_process
from .ffcv_writer import run_ffcv_writer

CONVERTERS = ("ffcv-writer", "dino-convert ffcv", "dino-convert wds")
COLUMNS = ["converter", "workers", "images", "seconds", "images_per_s", "images_per_core_s",
           "speedup_per_core", "scaling", "cpu_s", "images_per_cpu_s", "speedup_per_cpu_s",
           "process_s", "process_images_per_s", "process_speedup", "startup_s", "peak_mb",
           "verify_s", "output_mb", "runs_s"]
CONVERT_PLOT = PlotSpec(x="workers", group=("converter",), kind="line", xlabel="workers",
                        panels=(("images/s", ("images_per_s", "process_images_per_s")),
                                ("images per core-second", ("images_per_core_s",))))
GOALS = {"dino-convert ffcv": 1.5, "dino-convert wds": 3.0}   # in-process, per core
PROCESS_GOAL = 3.0   # whole process (start to exit), both formats, every worker count


@dataclass(frozen=True)
class ConvertBenchConfig:
    source: DataChoice = field(default_factory=DataChoice)
    workers: tuple[int, ...] = (1, 2)
    max_side: int = 500
    quality: int = 90
    repeats: int = 1
    scratch: str | None = None   # where outputs go (default: the system temp folder)
    verify: bool = True          # also time --verify of our outputs (verify_s)
    whole_process: bool = True   # also time each converter as its own process (process_s)


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


@dataclass(frozen=True)
class _Run:
    """One converter run: in-process seconds, images, output MB, verify seconds, CPU
    seconds; and, when measured, the whole process's seconds and peak tree memory (MB)."""

    seconds: float
    images: int
    mb: float
    verify_s: float
    cpu_s: float
    process_s: float = float("nan")
    peak_mb: float = float("nan")


def _timed(name: str, src: Path, out: Path, workers: int, cfg: ConvertBenchConfig) -> _Run:
    """One run of converter ``name``: in-process, then (``cfg.whole_process``) as a process."""
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
    if not cfg.whole_process:
        return _Run(seconds, n, mb, verify_s, cpu)
    out.mkdir(parents=True)
    proc = run_process(converter_command(name, src, out, workers, cfg.max_side, cfg.quality))
    shutil.rmtree(out)
    return _Run(seconds, n, mb, verify_s, cpu, proc.seconds, proc.peak_mb)


def _median(runs: list[_Run], field_name: str) -> float:
    return statistics.median(getattr(r, field_name) for r in runs)


def measure(src: Path, cfg: ConvertBenchConfig, log=print) -> list[dict]:
    import ffcv.fields  # noqa: F401  (imports are start-up, not conversion: done before)
    import ffcv.writer  # noqa: F401

    import pipelines.convert.beton  # noqa: F401
    import pipelines.convert.wds  # noqa: F401
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="dino-bench-convert-", dir=cfg.scratch))
    try:
        runs: dict[tuple[str, int], list[_Run]] = {}
        for rep in range(cfg.repeats):
            for w in cfg.workers:
                k = rep % len(CONVERTERS)  # rotated, so no converter always runs first
                order = CONVERTERS[k:] + CONVERTERS[:k]
                for name in order:
                    out = scratch / f"{name.replace(' ', '-')}-{w}-{rep}"
                    r = _timed(name, src, out, w, cfg)
                    runs.setdefault((name, w), []).append(r)
                    log(f"{name} workers={w} run {rep + 1}: {r.seconds:.2f} s in-process, "
                        f"{r.process_s:.2f} s whole process, {r.images / r.seconds:.0f} img/s")
        for (name, w), rs in runs.items():
            secs, n, cpu = _median(rs, "seconds"), rs[0].images, _median(rs, "cpu_s")
            process_s = _median(rs, "process_s")
            rows.append({"converter": name, "workers": w, "images": n, "seconds": round(secs, 3),
                         "images_per_s": round(n / secs, 1),
                         "images_per_core_s": round(n / secs / w, 1),
                         "process_s": round(process_s, 3),
                         "process_images_per_s": round(n / process_s, 1),
                         "startup_s": round(process_s - secs, 3),
                         "peak_mb": round(_median(rs, "peak_mb"), 1),
                         "verify_s": round(_median(rs, "verify_s"), 3),
                         "cpu_s": round(cpu, 3), "images_per_cpu_s": round(n / cpu, 1),
                         "output_mb": round(rs[0].mb, 1),
                         "runs_s": " ".join(f"{r.seconds:.2f}/{r.process_s:.2f}" for r in rs)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    by = {(r["converter"], r["workers"]): r for r in rows}
    for r in rows:
        base = by.get(("ffcv-writer", r["workers"]))
        first = by.get((r["converter"], cfg.workers[0]))
        r["speedup_per_core"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["process_speedup"] = round(r["process_images_per_s"] / base["process_images_per_s"],
                                     2)
        r["scaling"] = round(r["images_per_s"] / first["images_per_s"], 2)
        r["speedup_per_cpu_s"] = round(r["images_per_cpu_s"] / base["images_per_cpu_s"], 2)
    rows.sort(key=lambda r: (CONVERTERS.index(r["converter"]), r["workers"]))
    return rows


def summary(rows: list[dict], workers: tuple[int, ...]) -> list[str]:
    """One line per dino-convert format: in-process and whole-process ratios to FFCV's
    writer at every worker count, against their goals, and the 1 -> N worker scaling."""
    out = []
    for name, goal in GOALS.items():
        ours = [r for r in rows if r["converter"] == name]
        parts = [f"{r['speedup_per_core']:.2f}x at {r['workers']} worker(s)" for r in ours]
        whole = [f"{r['process_speedup']:.2f}x at {r['workers']} worker(s)" for r in ours
                 if r["process_speedup"] == r["process_speedup"]]  # not NaN: measured
        scale = [f"{r['scaling']:.2f}" for r in ours if r["workers"] != workers[0]]
        speed_ok = all(r["speedup_per_core"] >= goal for r in ours)
        whole_ok = all(r["process_speedup"] >= PROCESS_GOAL for r in ours)
        out.append(f"{name}: vs FFCV's writer in-process {', '.join(parts)} (goal >= {goal}x: "
                   f"{'met' if speed_ok else 'MISSED'}); whole process "
                   + (f"{', '.join(whole)} (goal >= {PROCESS_GOAL}x: "
                      f"{'met' if whole_ok else 'MISSED'})" if whole else "not measured")
                   + f"; scaling {workers[0]} -> {workers[-1]} workers: "
                   f"{', '.join(scale) or '-'} (ideal {workers[-1] / workers[0]:.1f}; FFCV's "
                   "writer: " + ", ".join(f"{r['scaling']:.2f}" for r in rows if r["converter"]
                                          == "ffcv-writer" and r["workers"] != workers[0])
                   + ")")
    return out


def run_convert_benchmark(cfg: ConvertBenchConfig, machine) -> BenchmarkResult:
    data, rows, load = measure_on_data(cfg.source, lambda root: measure(root, cfg))
    settings = {k: v for k, v in asdict(cfg).items() if k != "source"}
    return BenchmarkResult(
        what="convert", title="Conversion images/s per core: dino-convert vs FFCV's writer",
        machine=machine, baseline="FFCV's own DatasetWriter (RGBImageField jpg, same "
        "max_resolution and quality, same worker count) in the same run",
        rows=rows, columns=COLUMNS, config=settings, **data.result_fields(),
        notes=summary(rows, cfg.workers) + [
            "seconds: wall time of the conversion alone (median of the repeats; runs_s lists "
            "them, in-process/whole-process); dino-convert ran with --no-verify; verify_s is "
            "its read-back check run "
            "afterwards (a full decode of every stored image with the format's own reader)"
            + ("." if cfg.verify else ", not measured in this run (--no-verify)."),
            "process_s: the same conversion as a process of its own, from start to exit, as a "
            "user times it (`python -m pipelines.convert.cli --format F --no-verify "
            "--no-progress ...`, `python -m benchmarks.data.ffcv_writer ...`): interpreter "
            "start, imports (FFCV's pull in numba and torch), worker start-up, fsync and exit "
            "included; startup_s = process_s - seconds; process_speedup its ratio to FFCV's "
            "writer, whole process too; peak_mb the peak memory of the process and "
            "all its workers (psutil, sampled every 50 ms; PSS summed over processes, each "
            "physical page once; RSS where PSS cannot be read).",
            load,
            "images_per_core_s = images/s / workers (wall clock: on a shared machine another "
            "process's load lowers it and the scaling); cpu_s = CPU seconds of the converter's "
            "process and its workers (user + system), images_per_cpu_s and speedup_per_cpu_s "
            "on that basis, which other load barely moves."])
