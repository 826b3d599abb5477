"""pipelines/copy_stream.py: a loader's copies on a side stream, ordered by events.

On the CPU with a stand-in for ``torch.cuda`` that logs every call: the copies are queued
with the side stream current, the event is recorded on the side stream after them, the
compute stream waits on it (on the device: nothing waits on the host), and the copied
tensors are marked as used by the compute stream. On a GPU (marked ``gpu``): the copies do
not queue behind the compute stream's work.
"""
import contextlib
import itertools

import pytest
import torch

from pipelines.copy_stream import CopyStream


class FakeStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_event(self, event) -> None:
        self.log.append(("wait_event", self.name, event.name))

    def synchronize(self) -> None:
        self.log.append(("host waits", self.name))


class FakeEvent:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def record(self, stream) -> None:
        self.log.append(("record", self.name, stream.name))

    def synchronize(self) -> None:
        self.log.append(("host waits", self.name))


class FakeCuda:
    """``torch.cuda`` as far as CopyStream uses it, logging in call order."""

    def __init__(self) -> None:
        self.log: list = []
        self.current = FakeStream("compute", self.log)
        self.events = 0

    def Stream(self, device):  # noqa: N802 (torch's name)
        return FakeStream("side", self.log)

    def Event(self, blocking=False):  # noqa: N802
        self.events += 1
        return FakeEvent(f"done{self.events}", self.log)

    @contextlib.contextmanager
    def stream(self, stream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    def current_stream(self, device=None):
        return self.current


class FakeTensor:
    def __init__(self, name: str, cuda: FakeCuda) -> None:
        self.name, self.cuda = name, cuda

    def copy_from_host(self) -> None:  # a copy queued on the current stream
        self.cuda.log.append(("copy", self.name, self.cuda.current.name))

    def record_stream(self, stream) -> None:
        self.cuda.log.append(("record_stream", self.name, stream.name))


class LoggedCopies:
    """Stands in for a loader's ``CopyStream`` in the loaders' CPU tests: logs when the side
    stream is current and how many tensors are handed over, under which event's name."""

    def __init__(self, log: list) -> None:
        self.log, self.stream, self.events = log, None, itertools.count()

    @contextlib.contextmanager
    def queue(self):
        self.log.append("side stream on")
        yield
        self.log.append("side stream off")

    def hand_over(self, *tensors):
        event = FakeEvent(f"done{next(self.events)}", [])
        self.log.append(("hand over", len(tensors), event.name))
        return event


def test_on_the_cpu_there_is_no_stream_and_nothing_to_wait_for():
    copies = CopyStream(torch.device("cpu"))
    assert copies.stream is None
    with copies.queue():
        t = torch.zeros(3).copy_(torch.ones(3))
    assert copies.hand_over(t) is None and torch.equal(t, torch.ones(3))


def test_copies_then_event_then_the_compute_stream_waits_without_the_host():
    cuda = FakeCuda()
    copies = CopyStream(torch.device("cuda"), cuda=cuda)
    data, labels = FakeTensor("data", cuda), FakeTensor("labels", cuda)
    for batch in (1, 2):
        with copies.queue():
            data.copy_from_host()
            labels.copy_from_host()
        assert cuda.current.name == "compute"  # restored after the copies
        done = copies.hand_over(data, labels)
        assert done.name == f"done{batch}"
    assert cuda.log == [
        ("copy", "data", "side"), ("copy", "labels", "side"),  # copies on the side stream
        ("record", "done1", "side"),                            # then their event, there
        ("wait_event", "compute", "done1"),                     # compute waits on the device
        ("record_stream", "data", "compute"), ("record_stream", "labels", "compute"),
    ] + [
        ("copy", "data", "side"), ("copy", "labels", "side"), ("record", "done2", "side"),
        ("wait_event", "compute", "done2"),
        ("record_stream", "data", "compute"), ("record_stream", "labels", "compute")]
    assert not any(entry[0] == "host waits" for entry in cuda.log)


@pytest.mark.gpu
def test_copies_on_the_side_stream_do_not_wait_for_the_compute_stream():
    """With ~1 s of work queued on the compute stream, a copy queued after it on the side
    stream is done while that work still runs; the compute stream's read of the copy comes
    after both."""
    device = torch.device("cuda")
    copies = CopyStream(device)
    host = torch.arange(1 << 20, dtype=torch.float32).pin_memory()
    torch.cuda._sleep(1_000_000_000)  # busy compute stream
    busy = torch.cuda.Event()
    busy.record()
    with copies.queue():
        data = torch.empty_like(host, device=device)
        data.copy_(host, non_blocking=True)
    done = copies.hand_over(data)
    total = data.sum()  # on the compute stream, after the wait
    done.synchronize()
    assert not busy.query(), "the copy waited for the compute stream's work"
    assert total.item() == float(host.sum())
