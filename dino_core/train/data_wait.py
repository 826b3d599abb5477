"""How long training waits for data: the accounting behind ``data_wait_share`` and images/s.

The training loop marks, for every step i, when its batch is available (``batch_ready``)
and when the step's work has been enqueued (``step_enqueued``); ``start`` marks the
beginning of an epoch and stands in for the "done" of the step before the first. Then

    wait_i = ready_i - done_(i-1)      no step to run: waiting for the batch
    wall_i = done_i  - done_(i-1)
    data-wait share = sum(wait) / sum(wall)

CPU: a step runs while it is being enqueued, so host clocks (``perf_counter``) measure both.
GPU: the host only queues the step's kernels, so host clocks would charge the GPU's work to
whichever host call happens to block (typically the loader) and miss the GPU's idle time.
There the marks are CUDA events on the current stream: "done" completes when the step's
kernels have run; "ready", recorded once the batch is in hand, completes at the later of that
moment and "done". So ready - done is the time the GPU sat idle for want of the batch (0
when the batch came first), and includes data work queued on the same stream (the DALI
executor's GPU augmentation runs on the current stream). Events are only read by
``totals()``, which the loop calls on logging steps; that is its one host sync.

The training loop and the benchmarks' loop engine (``benchmarks/data/e2e.py``) both account with
this clock; the benchmark keeps the per-step figures too (``keep_steps``).
"""
from __future__ import annotations

import time

import torch


class HostMarks:
    """Marks on the host clock, in seconds."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def wait_for(self, mark: float) -> None:
        """Nothing to wait for: a host mark is final when taken."""


class CudaMarks:
    """Marks as timing events on the device's current stream."""

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end) / 1e3

    def wait_for(self, mark: torch.cuda.Event) -> None:
        mark.synchronize()  # host sync: until the last marked step has run (logging steps only)


class DataWaitClock:
    """Accumulates per-step data wait and wall time; ``totals()`` reads them.

    ``marks`` is ``HostMarks`` or ``CudaMarks`` (default: by device type); the accounting is
    the same for both, so the CPU tests of the host marks test the GPU's arithmetic too.
    ``keep_steps``: also keep every step's (wait, wall) in ``per_step`` (seconds), read by
    ``totals()`` like the sums.
    """

    def __init__(self, device: torch.device, marks: HostMarks | CudaMarks | None = None,
                 keep_steps: bool = False):
        if marks is None:
            marks = CudaMarks(device) if device.type == "cuda" else HostMarks()
        self.marks = marks
        self.wait = self.wall = 0.0
        self.steps = 0
        self.per_step: list[tuple[float, float]] | None = [] if keep_steps else None
        self._pending: list[tuple] = []   # (done before, ready, done) not read yet
        self._done = self._ready = None

    def start(self) -> None:
        """An epoch begins: what follows waits from here (loader start-up counts as wait)."""
        self._done = self.marks.mark()

    def batch_ready(self) -> None:
        self._ready = self.marks.mark()

    def step_enqueued(self) -> None:
        if self._done is None or self._ready is None:
            raise RuntimeError("DataWaitClock: call start() and batch_ready() before "
                               "step_enqueued()")
        done = self.marks.mark()
        self._pending.append((self._done, self._ready, done))
        self._done, self._ready = done, None

    def totals(self) -> tuple[float, float]:
        """(seconds waiting for data, seconds of wall time) summed over all steps so far."""
        if self._pending:
            self.marks.wait_for(self._pending[-1][2])
            for before, ready, done in self._pending:
                wait, wall = self.marks.seconds(before, ready), self.marks.seconds(before, done)
                self.wait += wait
                self.wall += wall
                if self.per_step is not None:
                    self.per_step.append((wait, wall))
            self.steps += len(self._pending)
            self._pending.clear()
        return self.wait, self.wall

