"""The DALI backend on a GPU (marked gpu; skipped without CUDA): views against the CPU path
within the decoders' difference, with torch's stream lagging behind DALI, and no host sync
from the backend."""
import warnings

import pytest
import torch

pytestmark = pytest.mark.dali
pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

from tests.pipelines.fidelity import assert_images_close, diff_stats, to_pixels  # noqa: E402
from tests.pipelines.test_dali_loader import SPEC, dali, epoch_batches  # noqa: E402
from tests.pipelines.test_dali_loader import folder  # noqa: E402,F401 (the fixture)

# nvJPEG (mixed) and libjpeg-turbo (cpu) decode the same JPEG slightly differently (IDCT
# rounding; chroma upsampling). Bound per view, in levels, measured on the CPU with the
# same rows on this folder's images: decoding with the chroma planes replaced by their 2x2
# means repeated (a plain upsampler against libjpeg-turbo's smoothing, decode differences
# mean <= 2.5, p99 <= 14) moves the finished views by mean <= 1.7, p99 <= 12.3 (median
# 1.3, 5.2); +-1 level of noise on every decoded pixel (IDCT rounding) by mean <= 0.6,
# p99 <= 2.6. The bound covers the first with a margin.
GPU_MEAN_TOL, GPU_P99_TOL = 2.0, 16.0


def lagging_batches(loader, epoch: int, lag_cycles: int = 50_000_000) -> list:
    """An epoch of a CUDA loader while torch's stream runs behind the host: a GPU spin
    (``torch.cuda._sleep``, about 25 ms) is queued before each batch, and nothing waits for
    it, so DALI prepares later batches while earlier copies are still queued. Views that
    DALI's buffers were reused under would differ from the CPU path's."""
    loader.set_epoch(epoch)
    batches, it = [], iter(loader)
    while True:
        torch.cuda._sleep(lag_cycles)
        try:
            batch = next(it)
            batches.append((batch.views, batch.labels))
        except StopIteration:
            return batches


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_views_match_the_cpu_path(folder, dtype):
    """The same samples and rows on both devices: CUDA views of the spec's shapes, dtype and
    device; labels equal; pixels within the decoder bound above (printed per view), with
    torch's stream lagging behind DALI (``lagging_batches``)."""
    from pipelines.photometric.finish import finisher
    spec = SPEC.with_overrides(output_dtype=dtype)
    print(f"photometric finish on cuda: {finisher('cuda').__module__}."
          f"{finisher('cuda').__qualname__}")
    with dali(folder, spec=spec) as cpu, dali(folder, spec=spec, device="cuda") as gpu:
        for epoch in (0, 1):
            pairs = list(zip(epoch_batches(cpu, epoch), lagging_batches(gpu, epoch)))
            assert len(pairs) == len(gpu) == 3
            for (vc, lc), (vg, lg) in pairs:
                assert lg.device.type == "cuda" and torch.equal(lc, lg.cpu())
                for v, (a, b) in enumerate(zip(vc, vg)):
                    assert b.device.type == "cuda" and b.dtype == getattr(torch, dtype)
                    assert b.shape == a.shape and b.is_contiguous()
                    got = to_pixels(b.float(), spec.mean, spec.std)
                    want = to_pixels(a.float(), spec.mean, spec.std)
                    print(f"epoch {epoch} view {v}: gpu vs cpu {diff_stats(got, want)}")
                    assert_images_close(got, want, mean_tol=GPU_MEAN_TOL,
                                        p99_tol=GPU_P99_TOL, what=f"gpu vs cpu view {v}")


@pytest.mark.gpu
def test_gpu_batches_do_not_sync_the_host(folder):
    """A few batches under torch's sync debug mode (after one warm-up batch, which uploads
    the finish's constants): every sync torch reports is printed with where it came from;
    none may come from the DALI backend (pipelines/dali_backend/). Syncs DALI itself might
    make are not visible to torch; the loader asks for outputs on torch's stream."""
    with dali(folder, device="cuda", drop_last=False) as ld:
        ld.set_epoch(0)
        batches = iter(ld)
        views = next(batches).views  # warm-up
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                seen = [batch.views[0].sum() for batch in batches]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert len(seen) == len(ld) - 1
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    for w in syncs:
        print(f"host sync: {w.filename}:{w.lineno}: {w.message}")
    print(f"{len(syncs)} host sync(s) reported in {len(seen)} batches")
    ours = [w for w in syncs if "dali_backend" in w.filename]
    assert not ours, [f"{w.filename}:{w.lineno}" for w in ours]
