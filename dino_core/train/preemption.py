"""When to checkpoint mid-epoch and when to stop: timers, steps, and preemption signals.

SIGTERM (what SLURM, Kubernetes and torchrun's agent send before killing a job) and SIGUSR1
(a SLURM warning signal, ``#SBATCH --signal=...USR1@...``) do not stop the process where it
is: the handler only records the signal. After the step in progress, the training loop asks
``StepGate.after_step`` what to do; on a stop it writes a checkpoint (with the data position
and every RNG state) and leaves with ``Preempted``, which ``dino-train`` turns into exit
status ``EXIT_PREEMPTED`` (143). Running the same command again resumes inside the epoch.

Under torchrun every rank must stop (and checkpoint) at the same step, or one would wait
forever in the next collective. Each rank's flags (stop asked, checkpoint due by its own
clock) are combined with a MAX all-reduce on the CPU (gloo; on GPUs a gloo group of its
own, so it never waits for the GPU's queued work). It is launched asynchronously after step
k and read after step k + 1: no rank waits for it (the other hosts sent their flags a whole
step earlier), and every rank reads the same answer at the same step. The price is one step
of delay between a signal (or a rank's clock) and the stop (or checkpoint) in a distributed
run; a single process answers at once. Checkpoints every N steps need no agreement: the step
count is the same on every rank.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

import torch
import torch.distributed as dist

log = logging.getLogger("dino_core.train.preemption")

EXIT_PREEMPTED = 143  # 128 + SIGTERM: "stopped on request, checkpoint written, resumable"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; it resumes on the next start."""


class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying; ``install`` / ``restore`` the handlers."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum  # nothing else here: we may be inside any code

    def install(self) -> None:
        """Take over SIGTERM / SIGUSR1 (only possible in the main thread; elsewhere, e.g. a
        run started from a worker thread, the process keeps its handlers)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("training outside the main thread: SIGTERM/SIGUSR1 stop the process "
                        "without a checkpoint")
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "another rank's signal"


class StepGate:
    """After every step: (stop now?, checkpoint now?), the same answer on every rank.

    every_minutes: a checkpoint at the first step boundary at least that long after the last
        one (0: off). every_steps: at every global iteration that is a multiple (0: off).
    """

    def __init__(self, every_minutes: float, every_steps: int, signals: StopSignals,
                 distributed: bool, device_kind: str) -> None:
        self.every_s = every_minutes * 60.0
        self.every_steps = every_steps
        self.signals = signals
        self.distributed = distributed
        self._group = None
        if distributed and device_kind != "cpu":  # a collective call: every rank builds it
            self._group = dist.new_group(backend="gloo")
        self._last = time.monotonic()
        self._pending: tuple[object, torch.Tensor] | None = None  # (work, flags) of last step
        self._stale_due = False  # the pending flags' "due" predates the last checkpoint

    def checkpointed(self) -> None:
        """A checkpoint was just written: the minutes count from now."""
        self._last = time.monotonic()
        self._stale_due = self._pending is not None

    def after_step(self, iterations_done: int) -> tuple[bool, bool]:
        stop = self.signals.received is not None
        due_steps = bool(self.every_steps) and iterations_done % self.every_steps == 0
        due_clock = self.every_s > 0 and time.monotonic() - self._last >= self.every_s
        if not self.distributed:
            return stop, due_steps or due_clock
        agreed_stop, agreed_due = self._collect()
        if not agreed_stop:  # after a stop nothing more is launched, on any rank
            flags = torch.tensor([int(stop), int(due_clock)], dtype=torch.int32)
            work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group,
                                   async_op=True)
            self._pending = (work, flags)
        return agreed_stop, due_steps or agreed_due

    def _collect(self) -> tuple[bool, bool]:
        """The previous step's agreed flags (False, False before the first step)."""
        if self._pending is None:
            return False, False
        work, flags = self._pending
        self._pending = None
        work.wait()  # host wait on gloo, launched a step ago: normally long finished
        stale, self._stale_due = self._stale_due, False
        return bool(flags[0]), bool(flags[1]) and not stale

    def drain(self) -> None:
        """Wait for the last launched all-reduce (at the end of a run, on every rank)."""
        if self._pending is not None:
            self._pending[0].wait()  # host wait on gloo: every rank launched it
            self._pending = None
