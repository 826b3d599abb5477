"""Running one measurement per loader backend, each in its own process, none able to sink
the others.

``pipeline`` and ``e2e`` measure several backends in one run (the reference first, as the
baseline). Backends are native libraries (DALI, FFCV, CUDA kernels) that can raise, crash
or hang; on a lent GPU machine with minutes to spend, one of them must not cost the
others' figures. So by default each backend runs in a fresh process (``spawn``), killed
with its loader workers when needed and dying with this process:

- a Python exception becomes the row's ``status`` (``failed: Type: message``, one line);
  ``BackendUnavailable`` (library or loader missing, data it cannot read) ``skipped: ...``;
- a crash (segfault, abort, out-of-memory kill) becomes ``failed: process died (SIGSEGV)``;
- a run longer than ``time_budget`` seconds is killed with every process below it (loader
  workers) and reported as ``failed: exceeded its time budget``;
- ``watch(pid)``, when given, is polled in this process while the backend runs and may end
  the run early with a row of its own (``e2e`` stops a training run after its seconds and
  reads what the trainer logged so far).

A fresh process also keeps accounting clean: CPU time of the process tree is per backend,
with no threads left over from the previous backend. ``isolate=False`` runs in-process (for
debugging: exceptions are still rows, but a crash or hang takes the run down).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

POLL_S = 0.25     # how often the parent looks at a running backend
EXIT_GRACE_S = 30  # a backend that reported gets this long to exit before it is killed


class BackendUnavailable(Exception):
    """A backend that cannot run here (library or loader missing, data it cannot read)."""


@dataclass(frozen=True)
class RunLimits:
    """How each backend runs: in its own process (``isolate``) and for at most
    ``time_budget`` seconds (None: no limit; only with ``isolate``)."""

    isolate: bool = True
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be > 0 seconds, got {self.time_budget}")


Measure = Callable[[str, Path], dict]   # (backend, path it reads) -> row fields; picklable
Watch = Callable[[int], "dict | None"]  # (backend process id) -> a final row, or None


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (default: this one), its threads, and its live
    and reaped child processes (loader workers)."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:  # exited in between
            continue
    return total


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _outcome(measure: Measure, backend: str, path: Path) -> tuple[str, object]:
    """(kind, payload): ("ok", row) | ("skipped", reason) | ("failed", reason)."""
    try:
        return "ok", measure(backend, path)
    except BackendUnavailable as err:
        return "skipped", one_line(err)
    except Exception as err:  # reported in the row; the other backends still run
        return "failed", one_line(f"{type(err).__name__}: {err}")


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a parent killed by a time
    box must not leave a backend running on the GPU); elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _child(conn, measure: Measure, backend: str, path: Path, threads: int,
           parent: int) -> None:
    """Entry point of a backend's process: bound to the parent's life, the parent's torch
    threads, one message back."""
    _die_with_parent(parent)
    import torch
    torch.set_num_threads(threads)
    try:
        conn.send(_outcome(measure, backend, path))
    finally:
        conn.close()


def _kill_tree(proc) -> None:
    """SIGKILL the backend's process and every process below it (its loader workers)."""
    try:
        victims = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        victims = []
    if proc.is_alive():
        proc.kill()
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            continue


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"process died ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"process died (signal {-exitcode})"
    return f"process exited with status {exitcode} without a result"


def run_isolated(measure: Measure, backend: str, path: Path, time_budget: float | None,
                 watch: Watch | None = None) -> tuple[str, object]:
    """``measure(backend, path)`` in a fresh process; its outcome as ``_outcome`` gives it."""
    import torch

    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, name=f"dino-bench-{backend}",
                       args=(send, measure, backend, path, torch.get_num_threads(),
                             os.getpid()))
    proc.start()
    send.close()  # the child holds the only write end: EOF here means it is gone
    start, outcome, reported = time.monotonic(), None, False
    try:
        while outcome is None:
            if recv.poll(POLL_S):
                try:
                    outcome, reported = recv.recv(), True
                except EOFError:
                    proc.join(5)
                    outcome = ("failed", _died(proc.exitcode))
                continue
            if watch is not None:
                row = watch(proc.pid)
                if row is not None:
                    outcome = ("ok", row)
                    break
            if not proc.is_alive() and not recv.poll(0):
                outcome = ("failed", _died(proc.exitcode))
            elif time_budget is not None and time.monotonic() - start > time_budget:
                outcome = ("failed", f"exceeded its time budget of {time_budget:g} s (killed)")
    finally:
        if reported:
            proc.join(EXIT_GRACE_S)  # let it close its loader; then no stragglers survive
        _kill_tree(proc)
        proc.join(5)
        recv.close()
    return outcome


def run_backend(measure: Measure, backend: str, path: Path, limits: RunLimits,
                watch: Watch | None = None) -> tuple[str, object]:
    """One backend's outcome, isolated or in-process as ``limits`` says."""
    if limits.isolate:
        return run_isolated(measure, backend, path, limits.time_budget, watch)
    return _outcome(measure, backend, path)


def for_each_backend(order: list[str], base_row: dict, path_for: Callable[[str], Path],
                     measure: Measure, tag: str, limits: RunLimits,
                     on_row: Callable[[list[dict]], None] | None = None,
                     watch_for: Callable[[str], Watch | None] | None = None) -> list[dict]:
    """A row per backend of ``order``: ``measure(backend, path_for(backend))`` (the path is
    prepared here, e.g. a cached conversion, untimed). Skips and failures are rows with the
    reason in ``status``; ``on_row(rows so far)`` after each (to write partial results)."""
    rows: list[dict] = []
    for backend in order:
        row = {"backend": backend, **base_row}
        try:
            path = path_for(backend)
        except Exception as err:  # e.g. the converter for this backend is missing
            kind, payload = "skipped", one_line(f"{type(err).__name__}: {err}")
        else:
            watch = watch_for(backend) if watch_for is not None else None
            kind, payload = run_backend(measure, backend, path, limits, watch)
        if kind == "ok":
            row.update(payload)
            row["status"] = "ok"
        else:
            row["status"] = f"{kind}: {payload}"
        print(f"[{tag}] {backend}: {row.get('images_per_s', 0):.2f} images/s "
              f"({row['status']})", flush=True)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def add_ratios(rows: list[dict], reference: str, ratios: dict[str, str]) -> None:
    """For every measured row, ``row[name] = row[column] / reference_row[column]``."""
    base = next((r for r in rows if r["backend"] == reference and r.get("status") == "ok"), None)
    for r in rows:
        if base is not None and r.get("status") == "ok":
            for name, column in ratios.items():
                if r.get(column) is not None and base.get(column):
                    r[name] = r[column] / base[column]
