"""Converters timed as a user times them: one process each, from start to exit.

``dino-bench convert`` reports two figures per converter: in-process (the conversion call
alone, imports done beforehand) and whole-process (``python -m pipelines.convert.cli ...``
or ``python -m benchmarks.data.ffcv_writer ...`` started, waited for, its interpreter
start, imports, worker start-up, conversion, fsync and exit included). Their difference is
start-up and shut-down cost, which a user pays on every run.

``run_process`` also samples the resident memory of the process and every process below it
(psutil, every ``SAMPLE_S``): the peak of that sum is ``peak_mb``. RSS counts pages shared
between a forked parent and its workers once per process, so the sum overstates the
physical memory a little; it is the figure a scheduler's memory limit sees per process, and
it is the same measure at every corpus size, which is what the scale check compares.
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
    """One converter process: wall seconds from start to exit, the peak resident memory of
    its process tree (MB) and the CPU seconds of the tree (user + system, reaped children)."""

    seconds: float
    peak_mb: float
    cpu_s: float


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


def _tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and every process below it (0 for those that ended)."""
    total = 0
    try:
        members = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # ended in between
            continue
    return total


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
        peak = 0
        try:
            watched = psutil.Process(child.pid)
        except psutil.Error:  # it ended before the first sample
            watched = None
        while True:
            if watched is not None:
                peak = max(peak, _tree_rss(watched))
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
    return ProcessRun(seconds=seconds, peak_mb=peak / 1e6, cpu_s=cpu)
