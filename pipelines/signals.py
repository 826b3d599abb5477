"""Signals in the loaders' helper processes: stop signals are the trainer's to handle."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Ignore SIGTERM / SIGUSR1 in this process (a DataLoader ``worker_init_fn``, or once in
    each DALI feed worker).

    They are the trainer's to handle: it finishes its step and checkpoints
    (``dino_core/train/preemption.py``). A scheduler that signals every process of a job
    (``scancel --signal``) would otherwise kill the workers under it, and their death would
    abort that step. Workers still exit with the main process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
