"""The FFCV executor's device path: FFCV's reused batch buffers, and no host sync per batch.

- ``ViewLayout``: the op's output holds every view's float64 rows (8-byte aligned in each of
  FFCV's buffers) before the crops; ``split`` reads them back from numpy or torch.
- ``SlotGuard`` (slots.py) with fake events: FFCV's thread waits for the copies out of a
  buffer before refilling it, and for the previous epoch's before its first fill.
- The loader (device path on the CPU, fake events standing in for CUDA events): every
  refill of a buffer comes after a wait for the copies out of it, always in FFCV's thread;
  per batch no tensor is built from host data (what ``torch.tensor(list, device=cuda)``
  does, a host sync on a GPU), and exactly two copies leave FFCV's buffer, both
  non_blocking: the crops + rows, and the labels, queued on the loader's side stream before
  the event the slot guard and the compute stream wait on, and before the finish.
  test_ffcv_gpu.py checks the same on a GPU under ``torch.cuda.set_sync_debug_mode("error")``.
"""
import gc
import itertools
import threading
import weakref

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from pipelines.ffcv_backend import loader as L  # noqa: E402
from pipelines.ffcv_backend.decode_once import ROW_ALIGN, ViewLayout, put_rows  # noqa: E402
from pipelines.ffcv_backend.slots import Retired, SlotGuard  # noqa: E402
from pipelines.loader import build_loader  # noqa: E402
from pipelines.sampling.param_row import WIDTH  # noqa: E402
from tests.pipelines.ffcv_twins import PLAIN, SEED, convert_folder  # noqa: E402
from tests.pipelines.images import write_image_folder  # noqa: E402
from tests.pipelines.test_copy_stream import LoggedCopies  # noqa: E402


class FakeEvent:
    """Stands in for a CUDA event: logs (``key``, waited in the main thread?) on waits."""

    def __init__(self, key, log: list) -> None:
        self.key, self.log = key, log

    def synchronize(self) -> None:
        self.log.append(("waited", self.key, threading.current_thread() is threading.main_thread()))


# ------------------------------------------------------------------------------ layout
def test_rows_lead_the_uint8_layout_aligned_and_split_reads_them_back():
    layout = ViewLayout((32, 32, 16, 16, 16))
    n = 3
    assert layout.rows_entries == 5 * WIDTH * 8 and layout.offsets[0] == layout.rows_entries
    assert layout.row_entries % ROW_ALIGN == 0 and layout.row_entries > layout.counts_at
    flat = np.zeros(n * layout.row_entries, np.uint8)
    rows = np.random.default_rng(0).normal(size=(n, 5, WIDTH))
    for i in range(n):
        put_rows(rows[i], flat, i, n)
    flat[n * layout.counts_at:n * layout.counts_at + n] = [1, 0, 1]
    for part in (layout.split(flat, n), layout.split(torch.from_numpy(flat), n)):
        assert np.array_equal(np.asarray(part.rows), rows.transpose(1, 0, 2))  # [views, n, W]
        assert [tuple(g.shape) for g in part.groups] == [(2 * n, 32, 32, 3), (3 * n, 16, 16, 3)]
        assert np.asarray(part.counts).tolist() == [1, 0, 1]
    views_end = n * layout.offsets[-1] + n * 16 * 16 * 3
    assert views_end == n * layout.counts_at  # views end where the counts start


def test_the_finished_layout_has_no_rows():
    layout = ViewLayout((32, 16), planar=True)
    assert layout.rows_entries == 0 and layout.offsets == (0, 32 * 32 * 3)
    assert layout.row_entries == 3 * (32 * 32 + 16 * 16) + 1
    flat = np.arange(2 * layout.row_entries, dtype=np.float32)
    part = layout.split(flat, 2)
    assert part.rows is None and part.groups[0].shape == (2, 3, 32, 32)


# ------------------------------------------------------------------------------ SlotGuard
def test_guard_waits_once_for_the_copies_out_of_a_slot():
    log = []
    guard = SlotGuard(4)
    guard.before_fill(0, 0)  # first use of slot 0: nothing to wait for
    guard.copied(0, FakeEvent("b0", log))
    guard.copied(1, None)  # synchronous copies: nothing to wait for
    assert [e.key for e in guard.pending()] == ["b0"]
    guard.before_fill(5, 1)
    assert log == []
    guard.before_fill(4, 0)
    assert log == [("waited", "b0", True)] and list(guard.pending()) == []
    guard.before_fill(8, 0)
    assert len(log) == 1
    with pytest.raises(RuntimeError, match="slot"):
        guard.before_fill(6, 3)


def test_the_previous_epoch_is_waited_for_then_released():
    class Buffers:  # stands in for the finished epoch's iterator, which owns the buffers
        pass

    log = []
    old = SlotGuard(4)
    old.copied(6, FakeEvent("e0b6", log))
    old.copied(7, FakeEvent("e0b7", log))
    buffers = Buffers()
    alive = weakref.ref(buffers)
    new = SlotGuard(4, previous=Retired(buffers, old))
    del buffers
    assert {e.key for e in new.pending()} == {"e0b6", "e0b7"}
    assert alive() is not None  # kept until the new epoch's first fill
    new.before_fill(0, 0)
    assert sorted(key for _, key, _ in log) == ["e0b6", "e0b7"]
    gc.collect()
    assert alive() is None and list(new.pending()) == []


# ------------------------------------------------------------------------------ the loader
@pytest.fixture(scope="module")
def device_loader(tmp_path_factory):
    """The device path on the CPU: PLAIN spec, raw .beton, 12 one-sample batches."""
    folder = write_image_folder(tmp_path_factory.mktemp("src") / "train", 3, 4, (40, 64))
    beton = convert_folder(folder, tmp_path_factory.mktemp("raw"), "raw")
    loader = build_loader(beton, backend="ffcv", batch_size=1, spec=PLAIN, num_workers=1,
                          seed=SEED, shuffle=True, photometric="device")
    yield loader
    loader.close()


def test_ffcv_refills_a_buffer_only_after_the_copies_out_of_it(device_loader, monkeypatch):
    """Logged order of waits and fills over two epochs and a close: FFCV's thread waits for
    the copies of batch b before it writes batch b + slots into the same buffer, and for the
    last epoch's pending copies before its first fill; the consumer never waits, except once
    in ``close``."""
    loader, backend = device_loader, device_loader.backend
    loader.close()
    slots, batches = backend._loader.slots, len(loader)
    assert batches > slots
    log, now = [], {}
    before_fill = SlotGuard.before_fill

    def logged_fill(guard, batch, slot):
        before_fill(guard, batch, slot)
        log.append(("fill", (now["epoch"], batch), threading.current_thread() is
                    threading.main_thread()))

    monkeypatch.setattr(SlotGuard, "before_fill", logged_fill)
    monkeypatch.setattr(backend, "_copies_event",
                        lambda *copied: FakeEvent((now["epoch"], next(now["batch"])), log))
    for epoch in (0, 1):
        now["epoch"], now["batch"] = epoch, itertools.count()
        loader.set_epoch(epoch)
        assert sum(1 for _ in loader) == batches
    iterated = len(log)
    loader.close()
    at = {entry[:2]: i for i, entry in enumerate(log)}
    assert len(at) == len(log)  # nothing waited for or filled twice
    for epoch in (0, 1):
        for b in range(slots, batches):
            assert at[("waited", (epoch, b - slots))] < at[("fill", (epoch, b))], (epoch, b)
    for b in range(batches - slots, batches):
        assert at[("waited", (0, b))] < at[("fill", (1, 0))], b
    assert not any(main for _, _, main in log[:iterated])  # all in FFCV's threads
    assert {key for _, key, main in log[iterated:] if main} == {
        (1, b) for b in range(batches - slots, batches)}  # close() waits for the rest


def test_no_host_data_becomes_a_tensor_and_two_copies_leave_each_buffer(device_loader,
                                                                         monkeypatch):
    """What a GPU would sync on, counted on the CPU over a steady-state epoch: tensors made
    from host data (lists, numbers, numpy: ``torch.tensor(list, device=cuda)`` copies and
    waits), and copies out of FFCV's buffer that are not non_blocking; the consumer waits
    on no event. The previous tensor finish failed this: 8 tensors from lists per batch."""
    loader, backend = device_loader, device_loader.backend
    loader.set_epoch(0)
    assert sum(1 for _ in loader) == len(loader)  # warm-up: constants are built once
    made, copies, log, buffers = [], [], [], []

    def recording(factory):
        def make(data, *args, **kwargs):
            if not isinstance(data, torch.Tensor):
                made.append((factory.__name__, type(data).__name__))
            return factory(data, *args, **kwargs)
        return make

    def in_ffcv_buffer(t):  # the current batch's decoder output or labels
        return bool(buffers) and any(lo <= t.data_ptr() < hi for lo, hi in buffers[-1])

    copy_ = torch.Tensor.copy_

    def recorded_copy(dst, src, non_blocking=False):
        if in_ffcv_buffer(src):
            copies.append((src.numel(), non_blocking))
        return copy_(dst, src, non_blocking)

    assemble = backend._assemble

    def noting_buffers(out, labels, *args):
        buffers.append([(a.ctypes.data, a.ctypes.data + a.nbytes) for a in (out, labels)])
        return assemble(out, labels, *args)

    monkeypatch.setattr(torch, "tensor", recording(torch.tensor))
    monkeypatch.setattr(torch, "as_tensor", recording(torch.as_tensor))
    monkeypatch.setattr(torch.Tensor, "copy_", recorded_copy)
    monkeypatch.setattr(backend, "_assemble", noting_buffers)
    batch = itertools.count()
    monkeypatch.setattr(backend, "_copies_event", lambda *copied: FakeEvent(next(batch), log))
    loader.set_epoch(1)
    assert sum(1 for _ in loader) == len(loader) == len(buffers)
    assert made == []
    assert copies == [(backend.decoder.layout.counts_at, True), (1, True)] * len(loader)
    assert log and not any(main for _, _, main in log)


def test_copies_on_the_side_stream_then_the_event_then_the_finish(device_loader, monkeypatch):
    """Per batch, in order: both copies out of FFCV's buffer while the side stream is
    current, then the hand-over (its event recorded after them, the compute stream waiting
    on it), the same event given to the slot guard (FFCV refills the slot after it), and
    only then the finish, which reads the copies on the compute stream."""
    loader, backend = device_loader, device_loader.backend
    log = []
    copy_ = torch.Tensor.copy_

    def logged_copy(dst, src, non_blocking=False):
        log.append("copy")
        return copy_(dst, src, non_blocking)

    finish_many = L.finish_many

    def logged_finish(batches, spec, impl="auto"):
        log.append(("finish", len(batches)))
        return finish_many(batches, spec, impl)

    copied = SlotGuard.copied

    def logged_copied(guard, batch, event):
        log.append(("slot guard", event.name))
        copied(guard, batch, event)

    monkeypatch.setattr(backend, "_copies", LoggedCopies(log))
    monkeypatch.setattr(torch.Tensor, "copy_", logged_copy)
    monkeypatch.setattr(L, "finish_many", logged_finish)
    monkeypatch.setattr(SlotGuard, "copied", logged_copied)
    loader.set_epoch(2)
    assert sum(1 for _ in loader) == len(loader)
    runs = len(backend.decoder.layout.groups())
    assert log == [entry for b in range(len(loader)) for entry in (
        "side stream on", "copy", "copy", "side stream off", ("hand over", 2, f"done{b}"),
        ("slot guard", f"done{b}"), ("finish", runs))]
