"""``dino-train`` with a fault injected at a chosen point, for the preemption tests.

    python -m tests.dino_core.train.preempt_worker MODE N -- DINO_TRAIN_ARGS...

MODE ``term``: this process sends itself SIGTERM during the step of global iteration N
    (0-based) when RANK is unset or in $PREEMPT_RANKS (default: every rank); the handler
    only records it, so the step finishes and the run stops after it.
MODE ``kill``: SIGKILL right after the N-th checkpoint is written (N counts from 1; a
    checkpoint file, or a sharded checkpoint folder under --parallel fsdp), as a machine
    failure would, before anything else happens.
"""
import os
import signal
import sys

from dino_core.train import sharded_store, step, store
from dino_core.cli.train import main


def _term_at(iteration: int) -> None:
    ranks = os.environ.get("PREEMPT_RANKS")
    if ranks is not None and os.environ.get("RANK", "0") not in ranks.split(","):
        return
    real = step.TrainStep.__call__

    def call(self, batch, at):
        if at.iteration == iteration:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this step
        return real(self, batch, at)
    step.TrainStep.__call__ = call


def _kill_after(count: int) -> None:
    written = [0]

    def counted(real):
        def save(*args, **kwargs):
            real(*args, **kwargs)
            written[0] += 1
            if written[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        return save
    store.save_latest = counted(store.save_latest)
    sharded_store.ShardedStore.save = counted(sharded_store.ShardedStore.save)


if __name__ == "__main__":
    mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
    {"term": _term_at, "kill": _kill_after}[mode](n)
    sys.exit(main(args))
