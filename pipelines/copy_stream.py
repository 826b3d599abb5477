"""A loader's copies to the GPU on a side stream, ordered by CUDA events, never by the host.

A loader moves every batch to the device: FFCV's host slot (~37 MB of crops and rows at
B=64) goes up, DALI's output views are copied into one tensor per view size. On torch's
current (compute) stream those copies would queue behind the training step that is running
and delay the next one; on a side stream they run while it runs. ``CopyStream`` is that
side stream, one per loader:

    with copies.queue():              # the side stream is current: allocate and copy here
        data = torch.empty(..., device=cuda)
        data.copy_(pinned, non_blocking=True)
    done = copies.hand_over(data)     # event on the side stream; compute stream waits on it

``hand_over`` records ``done`` after the copies on the side stream and makes the compute
stream wait on it (``wait_event``: a device-side wait, the host goes on), so whatever the
compute stream runs next (the photometric finish, the step) sees the copied data. The
tensors written on the side stream are marked as used by the compute stream
(``record_stream``): torch's caching allocator then does not hand their memory out again
before the compute stream's work on them has run. ``done`` is also what a source buffer's
owner waits on before it refills the buffer (FFCV's thread, ``ffcv_backend/slots.py``).
No host sync anywhere. On the CPU there is no stream: ``queue`` does nothing and
``hand_over`` returns None (the copies were synchronous).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class CopyStream:
    """The side stream of one loader on ``device`` (none on the CPU); see the module
    docstring. ``cuda``: ``torch.cuda``, or a stand-in with ``Stream``, ``Event``, ``stream``
    and ``current_stream`` (the CPU tests of the ordering)."""

    def __init__(self, device: torch.device, cuda=torch.cuda) -> None:
        self.device, self._cuda = device, cuda
        self.stream = cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def queue(self) -> Iterator[None]:
        """Within: the side stream is the current stream (allocations and copies go there)."""
        if self.stream is None:
            yield
            return
        with self._cuda.stream(self.stream):
            yield

    def hand_over(self, *tensors: torch.Tensor):
        """After the copies into ``tensors``: an event completing with them, which the compute
        stream now waits on, and ``tensors`` marked as used by the compute stream. None on the
        CPU."""
        if self.stream is None:
            return None
        compute = self._cuda.current_stream(self.device)
        done = self._cuda.Event(blocking=True)  # a host that waits on it sleeps, not spins
        done.record(self.stream)
        compute.wait_event(done)  # device-side wait: no host sync
        for t in tensors:
            t.record_stream(compute)
        return done
