"""Converters timed as a user times them: one process each, from start to exit.

``dino-bench convert`` reports two figures per converter: in-process (the conversion call
alone, imports done beforehand) and whole-process (``python -m pipelines.convert.cli ...``
or ``python -m benchmarks.data.ffcv_writer ...`` started, waited for, its interpreter
start, imports, worker start-up, conversion, fsync and exit included). Their difference is
start-up and shut-down cost, which a user pays on every run.

``run_process`` also samples the memory of the process and every process below it (psutil,
every ``SAMPLE_S``); ``peak_mb`` is the peak of the tree's sum of PSS (proportional set size,
Linux): a page shared by k processes counts 1/k in each, so the sum is the physical memory
the tree holds, each page once. Summed RSS (``peak_rss_mb``, kept as a second figure) counts
a page a forked worker shares with its parent once per process: it overstates the tree by
the shared pages and grows with them (a worker's view of the parent's input list counted
again in every worker), which is not memory anyone pays for. Where PSS cannot be read (not
Linux, or another user's process) ``peak_mb`` falls back to summed RSS; ``memory`` says which
was measured.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_S = 0.05   # memory sampling period (a shorter peak than this can be missed)


@dataclass(frozen=True)
class ProcessRun:
    """One converter process: wall seconds from start to exit, the peak memory of its
    process tree (MB: ``memory`` "pss" or "rss" summed, see the module docstring), the peak
    of its summed RSS (MB) and the CPU seconds of the tree (user + system, reaped children)."""

    seconds: float
    peak_mb: float
    cpu_s: float
    peak_rss_mb: float = float("nan")
    memory: str = "pss"


def converter_command(name: str, src: Path, out: Path, workers: int, max_side: int,
                      quality: int) -> list[str]:
    """The command line a user runs for converter ``name`` (``ffcv-writer``,
    ``dino-convert ffcv``, ``dino-convert wds``); ``dino-convert`` without its verify step."""
    if name == "ffcv-writer":
        return [sys.executable, "-m", "benchmarks.data.ffcv_writer", str(src), str(out),
                str(workers), str(max_side), str(quality)]
    fmt = name.split()[-1]
    return [sys.executable, "-m", "pipelines.convert.cli", "--format", fmt, "--workers",
            str(workers), "--max-side", str(max_side), "--jpeg-quality", str(quality),
            "--no-verify", "--no-progress", str(src), str(out)]


def _pss(p: psutil.Process) -> int | None:
    """``p``'s proportional set size in bytes; None where the system does not give it."""
    try:
        return getattr(p.memory_full_info(), "pss", None)
    except psutil.AccessDenied:
        return None


def tree_memory(proc: psutil.Process) -> tuple[int, int, bool]:
    """(summed PSS, summed RSS, whether every PSS was read) in bytes, of ``proc`` and every
    process below it; a process whose PSS cannot be read adds its RSS to the first sum, and
    one that ended in between adds nothing."""
    pss = rss = 0
    exact = True
    try:
        members = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0, exact
    for p in members:
        try:
            resident = p.memory_info().rss
            share = _pss(p)
        except psutil.Error:  # ended in between
            continue
        exact = exact and share is not None
        rss += resident
        pss += resident if share is None else share
    return pss, rss, exact


def _env() -> dict[str, str]:
    """This environment, with the folder holding this run's ``benchmarks`` and ``pipelines``
    first on the path: the child runs the same code as this process."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_process(cmd: list[str]) -> ProcessRun:
    """Start ``cmd``, wait for it to exit while sampling its tree's memory; raise
    RuntimeError with the end of its error output when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as errors:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=errors)
        peak = peak_rss = 0
        exact = True
        try:
            watched = psutil.Process(child.pid)
        except psutil.Error:  # it ended before the first sample
            watched = None
        while True:
            if watched is not None:
                pss, rss, whole = tree_memory(watched)
                peak, peak_rss, exact = max(peak, pss), max(peak_rss, rss), exact and whole
            try:  # returns the moment it exits: the wall time is not rounded to a sample
                rc = child.wait(timeout=SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        seconds = time.perf_counter() - t0
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with status {rc}: {err[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ProcessRun(seconds=seconds, peak_mb=(peak if exact else peak_rss) / 1e6, cpu_s=cpu,
                      peak_rss_mb=peak_rss / 1e6, memory="pss" if exact else "rss")
