"""The FFCV executor on a GPU (photometric="device", the GPU default): uint8 crops and
parameter rows from the decode-once op, one non-blocking copy per batch, ``finish_views``
on the device.

- Views equal the numba kernel (``finish_views(..., "cpu_kernel")`` on the CPU) applied to
  the crops cut from one decode with the reference's boxes and to the reference's rows,
  within ``ATOL`` (the CUDA kernel and the torch ops are each held within 2e-5 of those
  twins in tests/pipelines/photometric/; 1e-4 on the normalised output is 1/40 of a uint8
  level, while a wrong parameter or crop is off by levels).
- No host sync per batch: an epoch's batches after its first run under
  ``torch.cuda.set_sync_debug_mode("error")``; FFCV's buffers are pinned (so the copies are
  asynchronous).
- FFCV's reused buffers cannot corrupt a batch: a consumer whose copies lag behind the GPU
  (``torch.cuda._sleep`` queued before each) gets the batches of a consumer that waits for
  the GPU after each batch; without the guard's waits the same lag does corrupt them,
  proving the lag provokes the race.
"""
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.ffcv]
pytest.importorskip("ffcv", reason="ffcv is not installed")

from pipelines.ffcv_backend.slots import SlotGuard  # noqa: E402
from pipelines.loader import build_loader  # noqa: E402
from pipelines.photometric.finish import finish_views, finisher  # noqa: E402
from pipelines.sampling.param_row import to_rows  # noqa: E402
from tests.pipelines.ffcv_twins import (RECIPE, SEED, convert_folder,  # noqa: E402
                                        reference_params, stored_images, synthetic_folder,
                                        twin_crops)

ATOL = 1e-4
LAG_CYCLES = 100_000_000  # GPU clock cycles queued before each copy: ~50 ms on an H200
DEVICE = "cuda"  # the first test also runs with "cpu" (a dry run of its checks)


@pytest.fixture(scope="module")
def jpg(tmp_path_factory):
    folder = synthetic_folder(tmp_path_factory.mktemp("src") / "train")
    return convert_folder(folder, tmp_path_factory.mktemp("jpg"), "jpg")


@pytest.fixture(scope="module")
def gpu(jpg):
    """12 samples in 6 batches of 2: more batches than FFCV's 4 rotating buffers."""
    loader = build_loader(jpg, backend="ffcv", batch_size=2, spec=RECIPE, device=DEVICE,
                          num_workers=4, seed=SEED, shuffle=True, photometric="device")
    yield loader
    loader.close()


def test_gpu_views_are_the_reference_crops_finished_with_the_reference_rows(gpu, jpg):
    assert not gpu.backend.compiled
    impl = finisher(DEVICE, gpu.backend.finish_impl)
    print(f"photometric finish on {DEVICE}: {impl.__module__}.{impl.__qualname__}")
    images, labels = stored_images(jpg)
    epoch = 1
    order = gpu.plan.order(epoch)
    gpu.set_epoch(epoch)
    batches = [(b.views, b.labels) for b in gpu]
    assert len(batches) == len(gpu) == 6
    worst = 0.0
    for batch, (views, batch_labels) in enumerate(batches):
        indices = order[2 * batch:2 * batch + 2]
        assert batch_labels.device.type == DEVICE and batch_labels.dtype == torch.int64
        assert np.array_equal(batch_labels.cpu().numpy(), labels[indices])
        for b, index in enumerate(indices):
            params = reference_params(RECIPE, images[index], SEED, 0, epoch, index)
            crops = twin_crops(RECIPE, images[index], SEED, 0, epoch, index)
            for v, (crop, p) in enumerate(zip(crops, params)):
                view = views[v][b]
                assert view.device.type == DEVICE and view.shape == (3, *crop.shape[:2])
                want = finish_views(torch.from_numpy(crop[None]), to_rows([p]), RECIPE,
                                    "cpu_kernel")[0]
                err = (view.cpu() - want).abs().max().item()
                worst = max(worst, err)
                assert err <= ATOL, (batch, b, v, err)
    print(f"max |gpu - cpu kernel| = {worst:.2e}")


def test_gpu_batches_do_not_sync_the_host(gpu):
    gpu.set_epoch(0)
    assert sum(1 for _ in gpu) == len(gpu)  # warm-up: compile, constants, kernel library
    assert gpu.backend.buffers_pinned
    gpu.set_epoch(2)
    batches = iter(gpu)
    kept = [next(batches)]  # the epoch's start (FFCV allocates and pins its buffers)
    torch.cuda.set_sync_debug_mode("error")
    try:
        kept += list(batches)  # raises at the first host sync
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(kept) == len(gpu) > gpu.backend._loader.slots
    print(f"{len(kept) - 1} batches under sync debug mode 'error': no host sync")


def _epoch(loader, epoch: int, lag: bool) -> list:
    """One epoch as CPU copies: lagging (a GPU sleep queued before each batch's copies, no
    waits) or not (the host waits for the GPU after each batch, so no copy can lag)."""
    loader.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append((batch.views, batch.labels))
        if lag:
            _busy_gpu()  # delays the next batch's copies on the stream
        else:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return [([v.cpu() for v in views], labels.cpu()) for views, labels in out]


def _busy_gpu() -> None:
    """Queue ~50 ms of GPU work on the current stream (no host wait)."""
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(LAG_CYCLES)
        return
    a = torch.ones(4096, 4096, device="cuda")
    for _ in range(64):
        a = a @ a / 4096


def _same(a: list, b: list) -> bool:
    return all(torch.equal(la, lb) and all((x - y).abs().max().item() <= ATOL
                                           for x, y in zip(va, vb))
               for (va, la), (vb, lb) in zip(a, b))


def test_reused_ffcv_buffers_cannot_corrupt_a_batch(gpu, monkeypatch):
    epoch = 3
    steady = _epoch(gpu, epoch, lag=False)
    assert len(steady) == len(gpu) > gpu.backend._loader.slots
    assert _same(_epoch(gpu, epoch, lag=True), steady)
    gpu.close()
    monkeypatch.setattr(SlotGuard, "before_fill", lambda guard, batch, slot: None)
    assert not _same(_epoch(gpu, epoch, lag=True), steady), (
        "without the guard's waits the lag did not corrupt a batch: this test cannot tell "
        "a guarded loader from an unguarded one")
