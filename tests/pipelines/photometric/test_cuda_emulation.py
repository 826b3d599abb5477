"""The fused photometric kernel's device code, run on the CPU emulation, against its host twin.

``pipelines/photometric/cuda.py`` and the kernel (``csrc/photometric_kernel.cu``: the
contrast-means pass with its warp shuffles and static shared array, the fused pass with its
shared-memory tiles, halos and barriers, the >48 KiB opt-in of the widest blur) run as on a
GPU (``pipelines/kernels/emulation``: one OS thread per CUDA thread), on CPU tensors. The
reference is the host twin (the same tile phases with one thread); tolerances as on a GPU
(test_cuda.py): float32 within ``ATOL`` = 1e-5 (the contrast mean is summed per thread and
reduced per warp here, sequentially in the twin), 16-bit outputs within half a unit in the
last place and equal to the twin's almost everywhere. What the emulation cannot check is
listed in tests/pipelines/kernels/test_emulation.py.
"""
import itertools

import numpy as np
import pytest
import torch

from pipelines.photometric import cuda as C
from pipelines.photometric import host_twin as H
from pipelines.photometric.constants import kernel_consts
from pipelines.sampling import param_row
from tests.pipelines.kernels.emulation import emulated, emulation_library  # noqa: F401
from tests.pipelines.photometric.test_cpu_kernel import SPEC, images, rows_for, view
from tests.pipelines.photometric.test_host_twin import (WIDE, assert_arguments_are_checked,
                                                         bad_rows, recipe_batch, wide_blur_views)

pytestmark = pytest.mark.device_emulation
ATOL = 1e-5


def finish_both(imgs: np.ndarray, rows: np.ndarray, spec=SPEC) -> tuple[torch.Tensor, ...]:
    """(the kernel's output, the host twin's) for these crops and rows."""
    crops, r = torch.from_numpy(imgs), torch.from_numpy(rows)
    return C.finish(crops, r, spec), H.finish(crops, r, spec)


def assert_close_to_twin(imgs: np.ndarray, rows: np.ndarray, spec=SPEC) -> None:
    got, want = finish_both(imgs, rows, spec)
    assert got.shape == want.shape and torch.isfinite(got).all()
    err = (got - want).abs().reshape(len(rows), -1).max(dim=1).values
    assert err.max() <= ATOL, f"{err.max():.2e} at row {rows[int(err.argmax())].tolist()}"


@pytest.mark.parametrize("size,n_images,rows_dtype", [(224, 1, np.float64), (96, 1, np.float32),
                                                      (17, 2, np.float64)])
def test_recipes_match_the_twin(emulated, size, n_images, rows_dtype):
    """Every view of whole recipes (jitter, grayscale, blur, solarize as sampled): whole
    tiles and vector loads/stores at 224 and 96, byte loads and element stores at 17."""
    imgs, rows = recipe_batch(size, n_images, seed=size)
    assert_close_to_twin(imgs, rows.astype(rows_dtype))


def test_widest_blur_opts_in_above_48_kib_of_shared_memory(emulated):
    assert kernel_consts(WIDE).max_radius == 12  # 60 KiB of shared memory per block
    assert_close_to_twin(*wide_blur_views(40), WIDE)


def test_a_refused_opt_in_fails_its_call_only(emulated):
    """On a GPU with less opt-in shared memory than the widest blur needs (48 KiB here) the
    call fails, naming CUDA's error, and clears it: the next call (and torch's next launch
    check) does not inherit it. Found by the emulation: the refused attribute's error used
    to stay as the thread's last error and fail the next call's first launch."""
    emulated.set_optin_smem(48 * 1024)
    with pytest.raises(RuntimeError, match="invalid argument"):
        finish_both(*wide_blur_views(40), WIDE)
    assert_close_to_twin(*recipe_batch(17, 1, seed=3))


def test_every_jitter_order_with_grayscale_blur_and_solarize(emulated):
    orders = list(itertools.permutations(range(4)))
    views = [view(17, o, 1.3, 0.7, 1.2, 0.08, gray=k % 3 == 0, sigma=(None, 0.7, 2.0)[k % 3],
                  solarize=k % 2 == 0) for k, o in enumerate(orders)]
    imgs, rows = rows_for(images(17)[:1], *views)
    assert len({tuple(r) for r in rows[:, param_row.ORDER]}) == 24
    assert_close_to_twin(imgs, rows)


@pytest.mark.parametrize("dtype,half_ulp", [(torch.float32, 0.0), (torch.bfloat16, 2.0 ** -8),
                                            (torch.float16, 2.0 ** -11)])
def test_every_output_dtype_is_fully_written_and_rounded(emulated, dtype, half_ulp):
    spec = SPEC.with_overrides(output_dtype=str(dtype).removeprefix("torch."))
    imgs, rows = recipe_batch(40, 1, seed=5)
    crops, r = torch.from_numpy(imgs), torch.from_numpy(rows)
    out = torch.full((len(rows), 3, 40, 40), float("nan"), dtype=dtype)
    C.finish(crops, r, spec, out=out)
    assert torch.isfinite(out).all()
    exact = H.finish(crops, r, SPEC)
    assert ((out.float() - exact).abs() <= half_ulp * exact.abs() + ATOL).all()
    if dtype != torch.float32:  # the twin's 16-bit output but where float32 results straddle a tie
        same = out.view(torch.int16) == H.finish(crops, r, spec).view(torch.int16)
        assert same.float().mean() >= 0.999


def test_unaligned_buffers_take_the_scalar_paths_and_agree(emulated):
    imgs, rows = recipe_batch(96, 1, seed=2)
    crops, r = torch.from_numpy(imgs), torch.from_numpy(rows)
    want = C.finish(crops, r, SPEC)
    raw = torch.empty(crops.numel() + 1, dtype=torch.uint8)
    shifted = raw[1:].view(crops.shape)  # 1 byte off: byte loads
    shifted.copy_(crops)
    flat = torch.full((want.numel() + 1,), float("nan"))
    out = flat[1:].view(want.shape)  # 4 bytes off: element stores
    C.finish(shifted, r, SPEC, out=out)
    assert torch.equal(out, want)


def test_many_sizes_in_one_call_equal_one_call_each(emulated):
    batches = [tuple(map(torch.from_numpy, recipe_batch(s, 1, seed=i)))
               for i, s in enumerate((40, 17, 13) * 6)]  # 18 > 16 segments per call
    batches = [(c[:1], r[:1]) for c, r in batches]
    together = C.finish_many(batches, SPEC)
    for (crops, rows), got in zip(batches, together):
        assert torch.equal(got, C.finish(crops, rows, SPEC))


def test_rows_the_kernel_cannot_apply_give_nan_views(emulated):
    imgs, rows = bad_rows(40)
    got, want = finish_both(imgs, rows)
    assert torch.isfinite(got[0]).all() and torch.isnan(got[1:]).all()
    assert (got[0] - want[0]).abs().max() <= ATOL


def test_the_c_side_checks_its_arguments(emulated):
    abi, reason = C._bound()
    assert reason is None and abi is not None
    assert_arguments_are_checked(abi)


def test_tensors_must_be_on_the_cpu(emulated):
    imgs, rows = recipe_batch(17, 1, seed=1)
    with pytest.raises(ValueError, match="crops is on meta.*CPU emulation"):
        C.finish(torch.from_numpy(imgs).to("meta"), torch.from_numpy(rows).to("meta"), SPEC)


def test_auto_dispatch_on_the_cpu_does_not_pick_the_emulation(emulated):
    """The emulation serves the tests: finish_views' auto choice for CPU crops stays a CPU
    implementation, whatever library is selected."""
    from pipelines.photometric import finish as F

    assert C.unavailable_reason() is None  # the emulation is selected and loads
    assert F._auto("cpu")[0] in ("cpu_kernel", "torch")
