"""The one timing harness every ``dino-bench`` sub-command uses.

- ``time_fn(fn, device, warmup, iters, setup)``: warm up, then time ``iters`` calls and return a
  ``Timing`` (median, IQR, min-max of the per-call seconds). On a GPU each call is bracketed
  by CUDA events and the host synchronises once, at the end; on the CPU ``perf_counter``.
- ``summarize(samples)``: the same statistics for any list of seconds.
- ``PeakMemory(device)``: a context manager reporting peak memory of the block:
  ``torch.cuda.max_memory_allocated`` on a GPU, peak resident set size (psutil, sampled by a
  background thread) on the CPU.
- ``describe_machine()``: CPU model and cores, GPU, library versions, date, command line, as
  a ``MachineInfo``.
- ``BenchmarkResult``, ``MachineInfo`` + ``write_results`` (defined in ``report.py``,
  re-exported): JSON, CSV, a markdown report, a PNG plot (matplotlib Agg) and tensorboard
  scalars, named ``<machine>_<yyyymm>_<what>.*``. The import goes one way only
  (harness -> report): ``report`` needs none of the measuring code.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import psutil
import torch

# harness -> report, never back: report holds the result types (MachineInfo included)
from .report import BenchmarkResult, MachineInfo, PlotSpec, write_results  # re-exported

__all__ = ["BenchmarkResult", "MachineInfo", "PeakMemory", "PlotSpec", "Timing", "cpu_cores",
           "describe_machine", "resolve_device", "summarize", "synchronize", "time_fn",
           "write_results"]


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Timing:
    """Statistics of repeated timings, in seconds per call."""

    samples: tuple[float, ...]
    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def per_second(self, items_per_call: float) -> float:
        """Throughput at the median: ``items_per_call / median``."""
        return items_per_call / self.median

    def as_row(self, prefix: str = "time") -> dict[str, float]:
        """Flat columns in milliseconds for a result row."""
        return {f"{prefix}_median_ms": self.median * 1e3, f"{prefix}_iqr_ms": self.iqr * 1e3,
                f"{prefix}_min_ms": self.min * 1e3, f"{prefix}_max_ms": self.max * 1e3,
                f"{prefix}_n": len(self.samples)}


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default 'linear' method) of sorted data."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples: list[float] | tuple[float, ...]) -> Timing:
    """Median, quartiles, min, max and mean of ``samples`` (seconds). Needs >= 1 sample."""
    if len(samples) == 0:
        raise ValueError("summarize needs at least one timing sample")
    xs = sorted(float(s) for s in samples)
    return Timing(samples=tuple(float(s) for s in samples), median=statistics.median(xs),
                  q1=_quantile(xs, 0.25), q3=_quantile(xs, 0.75), min=xs[0], max=xs[-1],
                  mean=statistics.fmean(xs))


# ----------------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; otherwise validated as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but no CUDA GPU is available")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a host sync; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
            iters: int = 10, setup: Callable[[], object] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times timed; return the stats.

    ``setup``, when given, runs before every call, untimed: it restores what the previous
    call consumed (e.g. inputs a call overwrites), which is not the measured work.

    GPU: one pair of CUDA events per call, recorded on the current stream (``setup``'s work
    is queued before the start event); the only host syncs are before the first timed call
    and after the last one, so the calls queue back to back as they would in training.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = torch.device(device)
    prepare = setup if setup is not None else (lambda: None)
    for _ in range(warmup):
        prepare()
        fn()
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        torch.cuda.synchronize(device)  # host sync: warm-up work must not leak into timing
        for s, e in zip(starts, ends):
            prepare()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)  # host sync: the one wait, at the end
        return summarize([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)])
    samples = []
    for _ in range(iters):
        prepare()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples)


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a ``with`` block, in bytes: ``.peak`` (absolute) and ``.extra``
    (peak minus the level at entry).

    GPU: ``torch.cuda.max_memory_allocated`` after resetting the peak counter (tensor memory
    only). CPU: the process's resident set size sampled every ``interval`` seconds by a
    background thread (includes every allocation, not only tensors; short spikes between
    samples can be missed).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.start)

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.peak = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = psutil.Process().memory_info().rss
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(*dists: str, prefix: str | None = None) -> str:
    """Installed version of the first distribution found, or 'absent'."""
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    if prefix:
        for d in metadata.distributions():
            name = (d.metadata["Name"] or "").lower()
            if name.startswith(prefix):
                return d.version
    return "absent"


GPU_SLUGS = ("h200", "h100", "a100", "a10g", "l40s", "l4", "v100", "t4", "rtx 4090",
             "rtx 3090", "a6000")


def machine_slug(gpu_name: str, cores: int) -> str:
    """``h200`` for an NVIDIA H200 ..., ``cpu-<n>core`` without a GPU."""
    if not gpu_name:
        return f"cpu-{cores}core"
    low = gpu_name.lower()
    for key in GPU_SLUGS:
        if key in low:
            return key.replace(" ", "")
    return re.sub(r"[^a-z0-9]+", "-", low.replace("nvidia", "")).strip("-") or "gpu"


def describe_machine(device: torch.device | str = "cpu", argv: list[str] | None = None
                     ) -> MachineInfo:
    """Describe this machine and the command line (``argv`` defaults to ``sys.argv``)."""
    device = torch.device(device)
    gpu, count = "", 0
    if device.type == "cuda" and torch.cuda.is_available():
        gpu, count = torch.cuda.get_device_name(device), torch.cuda.device_count()
    cores = cpu_cores()
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": _version("numpy"), "dali": _version(prefix="nvidia-dali"),
                "ffcv": _version("ffcv")}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    args = sys.argv if argv is None else argv
    prog = os.path.basename(args[0]) if args else "dino-bench"
    if prog in ("cli.py", "__main__.py", "-c") or prog.startswith("pytest"):
        prog = "dino-bench"
    command = " ".join([prog] + [shlex.quote(a) for a in args[1:]])
    return MachineInfo(slug=machine_slug(gpu, cores), cpu_model=_cpu_model(), cpu_cores=cores,
                       torch_threads=torch.get_num_threads(),
                       gpu=gpu, gpu_count=count, versions=versions,
                       date=_dt.datetime.now().isoformat(timespec="seconds"), command=command)
