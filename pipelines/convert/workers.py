"""A small process pool for converters: bounded queues, ordered results, per-worker state.

``WorkerPool(job, workers)`` forks the workers when its ``with`` block is entered (before
the caller builds anything large they should not inherit) and ``run``s the tasks later.

``run_ordered(job, tasks, workers)`` starts ``workers`` processes; each builds its state once
(``job.start(worker_id)``), runs ``job.run(state, task, tick)`` for the tasks it takes from a
bounded queue, and at the end ``job.finish(state)`` (e.g. flush a half-filled page). Results
come back to the caller in task order; at most ``inflight`` tasks are queued or unreported
at any time, so memory stays flat however many tasks there are. ``tick(n)`` lets a worker
report progress (images done) before its task ends; the caller's ``on_tick`` receives it.

A worker that dies (killed, crashed) is noticed within a second and raises RuntimeError in
the caller; an exception inside ``job.run`` comes back with its traceback text.
"""
from __future__ import annotations

import gc
import queue
import traceback
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..processes import worker_context

_DONE, _RESULT, _TICK, _ERROR, _FINISHED = range(5)
# The caller polls its result queue this often (a long blocking get stalled two-worker
# runs for up to the whole timeout, repeatedly; short polls cost nothing measurable).
POLL_S = 0.05


class Job(Protocol):
    def start(self, worker_id: int) -> Any: ...
    def run(self, state: Any, task: Any, tick: Callable[[int], None]) -> Any: ...
    def finish(self, state: Any) -> Any: ...


def _worker(job: Job, worker_id: int, tasks, results) -> None:
    try:
        state = job.start(worker_id)
        while True:
            item = tasks.get()
            if item is None:
                break
            seq, task = item
            value = job.run(state, task, lambda n: results.put((_TICK, worker_id, n)))
            results.put((_RESULT, seq, value))
        results.put((_FINISHED, worker_id, job.finish(state)))
    except BaseException:  # report, then end: the caller raises
        results.put((_ERROR, worker_id, traceback.format_exc()))


class WorkerPool:
    """``workers`` processes running ``job``, forked on entering the ``with`` block: a
    converter enters it before it lists its inputs, so the workers inherit none of that list
    (nor the allocator's free space it leaves behind, which a worker's allocations would
    otherwise turn into private copies of the parent's pages) and their memory does not
    depend on the corpus size. ``run`` feeds them the tasks (once per pool)."""

    def __init__(self, job: Job, workers: int, inflight: int | None = None):
        ctx = worker_context()
        self.inflight = inflight or 4 * workers
        self.tasks, self.results = ctx.Queue(maxsize=self.inflight), ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(job, i, self.tasks, self.results),
                                  daemon=True) for i in range(workers)]

    def __enter__(self) -> "WorkerPool":
        # Every object that exists now moves to the collector's permanent generation (here
        # and, inherited, in the workers) until the pool ends: a full collection writes to
        # each object it examines, which would copy every page of the parent's objects into
        # each worker (and leave the parent's copy unshared) as soon as one runs.
        gc.freeze()
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc) -> None:
        gc.unfreeze()
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        self.tasks.cancel_join_thread()
        self.results.cancel_join_thread()

    def run(self, tasks: Iterable[Any], on_tick: Callable[[int], None] | None = None,
            on_finish: Callable[[Any], None] | None = None) -> Iterator[Any]:
        """Yield ``job.run`` of every task in ``tasks`` order (see ``run_ordered``)."""
        procs, task_q, result_q, inflight = self.procs, self.tasks, self.results, self.inflight
        it = iter(tasks)
        pending: dict[int, Any] = {}
        sent = next_out = finished = 0
        exhausted = False
        while True:
            while not exhausted and sent - next_out < inflight:
                try:
                    task = next(it)
                except StopIteration:
                    exhausted = True
                    for _ in procs:
                        task_q.put(None)
                    break
                task_q.put((sent, task))
                sent += 1
            while next_out in pending:
                yield pending.pop(next_out)
                next_out += 1
            if exhausted and next_out == sent and finished == len(procs):
                return
            try:
                kind, key, value = result_q.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"a conversion worker died (exit code "
                                       f"{dead[0].exitcode}); nothing was published")
                continue
            if kind == _RESULT:
                pending[key] = value
            elif kind == _TICK and on_tick is not None:
                on_tick(value)
            elif kind == _FINISHED:
                finished += 1
                if on_finish is not None:
                    on_finish(value)
            elif kind == _ERROR:
                raise RuntimeError(f"a conversion worker failed:\n{value}")


def run_ordered(job: Job, tasks: Iterable[Any], workers: int, inflight: int | None = None,
                on_tick: Callable[[int], None] | None = None,
                on_finish: Callable[[Any], None] | None = None) -> Iterator[Any]:
    """Yield ``job.run`` of every task in ``tasks`` order, computed by ``workers`` processes
    (a ``WorkerPool`` started on the first ``next``).

    ``on_finish`` receives each worker's ``job.finish`` value once all tasks are done (before
    the generator ends).
    """
    with WorkerPool(job, workers, inflight) as pool:
        yield from pool.run(tasks, on_tick, on_finish)
