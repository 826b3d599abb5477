"""FFCV's batch buffers refilled only after the loader's asynchronous copies out of them.

FFCV 1.0.2 decodes batch ``b`` of an epoch into slot ``b % (batches_ahead + 2)`` of buffers
it allocates (and pins, on a CUDA machine) per epoch, and hands the consumer views of that
slot (``EpochIterator``). Its own guard, a CUDA event waited on by the slot's stream, orders
GPU work that FFCV's pipeline queues on that stream; our decoder writes the slot from the
host, and the loader copies it to the device with ``non_blocking`` copies on its side
stream (``pipelines.copy_stream``), which nothing orders before the host's next write into
that slot.

``SlotGuard`` does: after queueing the copies out of a batch the loader records an event on
its side stream (``copied``; the compute stream waits on the same event before it reads the
copies), and FFCV's thread waits for it on the host (``before_fill``, called by
``GuardedEpochIterator`` before its pipeline writes the slot again). The consumer never
waits. The event is always there in time: FFCV refills the slot of batch ``b`` (for batch
``b + slots``) only after putting batch ``b + slots - 1`` into its queue of
``batches_ahead`` batches, so after the consumer took batch ``b + 1``, which it does only
after queueing the copies of batch ``b``.

Across epochs: an epoch's buffers are freed with its iterator, and torch's caching host
allocator, which pinned them, does not see copies made from numpy views of that memory, so
it may hand the memory out again (to the next epoch's buffers) while such a copy is queued.
A finished epoch's iterator is therefore kept alive by the next epoch's guard until that
epoch's thread has waited for the pending copies, before its first fill (``Retired``).
"""
from __future__ import annotations

import threading
import time
from queue import Empty
from typing import NamedTuple, Protocol, Sequence

import numpy as np
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler


class CopyEvent(Protocol):
    """What the guard needs of an event (``torch.cuda.Event`` in use; fakes in tests)."""

    def synchronize(self) -> None: ...


class Retired(NamedTuple):
    """A finished epoch: its iterator (kept alive: it owns the buffers) and its guard."""

    iterator: object
    guard: "SlotGuard"


class SlotGuard:
    """Per epoch: the event of the last copies out of each of FFCV's ``slots`` buffers.

    previous: the epoch before, waited for (and then released) before the first fill.
    """

    def __init__(self, slots: int, previous: Retired | None = None) -> None:
        self.slots = slots
        self._events: list[CopyEvent | None] = [None] * slots
        self._lock = threading.Lock()
        self._previous = previous

    def copied(self, batch: int, event: CopyEvent | None) -> None:
        """The consumer queued every copy out of batch ``batch``'s slot; ``event`` completes
        with them (None: the copies were synchronous)."""
        with self._lock:
            self._events[batch % self.slots] = event

    def before_fill(self, batch: int, slot: int) -> None:
        """FFCV's thread, before it writes batch ``batch`` into ``slot``: wait on the host
        for the copies out of that slot (and, first, for the previous epoch's)."""
        if slot != batch % self.slots:
            raise RuntimeError(f"FFCV filled batch {batch} into slot {slot}, not "
                               f"{batch % self.slots}: this FFCV rotates its buffers "
                               "differently, and the loader's copies cannot be ordered")
        previous, self._previous = self._previous, None
        if previous is not None:
            previous.guard.wait_all()  # then ``previous`` (its buffers) may be freed
        with self._lock:
            event, self._events[slot] = self._events[slot], None
        if event is not None:
            event.synchronize()  # host wait in FFCV's thread; the consumer never waits

    def pending(self) -> Sequence[CopyEvent]:
        """Events not waited for yet, this epoch's and the previous one's."""
        with self._lock:
            own = [e for e in self._events if e is not None]
        previous = self._previous
        return own + (list(previous.guard.pending()) if previous is not None else [])

    def wait_all(self) -> None:
        """Wait on the host for every copy out of this epoch's (and the previous epoch's)
        buffers: before they may be freed."""
        for event in self.pending():
            event.synchronize()


class GuardedEpochIterator(EpochIterator):
    """FFCV's epoch thread, calling ``guard.before_fill`` before each batch's pipeline.

    Each batch it yields is FFCV's outputs followed by the batch's sample ids (int64 [n],
    the dataset indices FFCV ran the pipeline on, a copy: FFCV's are a view of its order).
    """

    def __init__(self, loader: Loader, order, guard: SlotGuard) -> None:
        self.guard = guard  # before FFCV's __init__, which starts the thread
        super().__init__(loader, order)

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        if self.terminate_event.is_set():
            # FFCV checks its terminate event only while its queue is full, and ends an
            # epoch by putting an end marker with no timeout: the consumer has gone, so
            # empty the queue and end the epoch here (FFCV's run() returns on StopIteration)
            _empty(self.output_queue)
            raise StopIteration
        self.guard.before_fill(b_ix, batch_slot)
        outputs = super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)
        return (*outputs, np.array(batch_indices, dtype=np.int64))

    def stop(self, timeout: float = 120.0) -> bool:
        """End the epoch's thread, wait for it, then free its memory; True if it ended.

        FFCV's ``close`` only signals the thread and frees the epoch's memory at once: the
        thread may still be decoding into it, and a thread left inside numba's parallel
        decode when the interpreter exits aborts the process ("terminate called without an
        active exception"). Emptying the queue frees a thread blocked on FFCV's end marker
        (put with no timeout) or on a batch; the batch after that ends the epoch
        (``run_pipeline``). ``timeout`` only guards against a hang.
        """
        self.terminate_event.set()
        deadline = time.monotonic() + timeout
        while (self.is_alive() and threading.current_thread() is not self
               and time.monotonic() < deadline):
            _empty(self.output_queue)  # batches nobody will read
            self.join(0.05)  # host wait: at most one batch's decode in all
        self.close()
        return not self.is_alive()


def _empty(queue) -> None:
    """Drop every item of ``queue`` (a ``queue.Queue``) without blocking."""
    while True:
        try:
            queue.get_nowait()
        except Empty:
            return


class GuardedLoader(Loader):
    """FFCV's ``Loader`` whose epochs run as ``GuardedEpochIterator``s."""

    @property
    def slots(self) -> int:
        """Batch buffers FFCV rotates through (``EpochIterator``: batches_ahead + 2)."""
        return self.batches_ahead + 2

    def guarded_epoch(self, guard: SlotGuard) -> GuardedEpochIterator:
        """What ``iter(loader)`` does in FFCV 1.0.2 (the next epoch's order, trimmed to
        whole batches; the code compiled on first use), with the guarded thread."""
        if guard.slots != self.slots:
            raise ValueError(f"guard for {guard.slots} slots, FFCV uses {self.slots}")
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()[:len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        return GuardedEpochIterator(self, order, guard)
