"""pipelines.photometric.host_twin: the CUDA kernel's header, built for the host, against the
numba kernel (cpu_kernel) and the torch ops (torch_ops), on every CPU machine.

The twin runs the kernel's own tile phases (csrc/photometric_tile.cuh) with one thread, so
these tests cover the tiling, halos, clamped edges, vector and scalar loads and stores, and
the per-pixel math that the GPU runs; tests/pipelines/photometric/test_cuda.py then holds
the GPU kernel to this twin.

Tolerance ``ATOL`` = 1e-5 on the normalised output against both: all three compute the same
float32 formulas and differ only in rounding order (the contrast mean's summation, blur
taps, multiply-adds), worth a few 1e-6 (the budget is derived in test_cpu_kernel.py).
Sizes: 224 and 96 (the recipe's, whole 32-pixel tiles and vector paths), 40 and 17 (partial
tiles; 17: byte loads and element stores), 13 (smaller than one tile).
"""
import ctypes
import itertools

import numpy as np
import pytest
import torch

from pipelines.photometric import host_twin as H
from pipelines.photometric import kernel_abi
from pipelines.photometric.constants import kernel_consts, kernel_radius
from pipelines.sampling import param_row
from pipelines.sampling.param_row import COL
from tests.pipelines.photometric.test_cpu_kernel import (ALONE, SPEC, images, kernel,
                                                         recipe_rows, rows_for, view)
from tests.pipelines.photometric.test_cpu_kernel import twin as torch_twin

ATOL = 1e-5
SIZES = (224, 96, 40, 17, 13)

if H.compiler() is None:
    pytest.skip("no C++ compiler here (install g++ or set CXX): the host twin cannot be built",
                allow_module_level=True)


def run_twin(imgs: np.ndarray, rows: np.ndarray, spec=SPEC, dtype=torch.float32) -> np.ndarray:
    out = H.finish(torch.from_numpy(imgs), torch.from_numpy(rows), spec, dtype)
    return out.float().numpy()


def assert_matches(imgs: np.ndarray, rows: np.ndarray, spec=SPEC, what: str = "") -> None:
    """The twin within ATOL of the numba kernel and of the torch ops, every element finite."""
    got = run_twin(imgs, rows, spec)
    assert np.isfinite(got).all(), f"{what}: output not fully written"
    for name, want in (("cpu_kernel", kernel(imgs, rows, spec)),
                       ("torch_ops", torch_twin(imgs, rows, spec))):
        err = np.abs(got - want).reshape(len(rows), -1).max(axis=1)
        assert err.max() <= ATOL, (f"{what}: max |twin - {name}| = {err.max():.2e} "
                                   f"(row {int(err.argmax())}: {rows[err.argmax()].tolist()})")


def recipe_batch(size: int, n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every view of ``n_images`` recipes drawn from the stream, all applied at ``size`` to
    the test images (photo and noise): uint8 [n, S, S, 3], float64 rows [n, WIDTH]."""
    rows = np.concatenate(recipe_rows(n_images, seed))
    base = images(size)
    imgs = np.ascontiguousarray(base[np.arange(len(rows)) % len(base)])
    return imgs, rows


# ------------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", list(ALONE))
def test_each_op_alone(case, size):
    imgs, rows = rows_for(images(size), view(size, **ALONE[case]))
    assert_matches(imgs, rows, what=f"{case} at {size}")


@pytest.mark.parametrize("size", [96, 17])
def test_all_24_jitter_orders(size):
    orders = list(itertools.permutations(range(4)))
    imgs, rows = rows_for(images(size), *[view(size, o, 1.3, 0.7, 1.2, 0.08) for o in orders])
    assert len({tuple(r) for r in rows[:, param_row.ORDER]}) == 24
    assert_matches(imgs, rows, what=f"24 orders at {size}")


@pytest.mark.parametrize("size", [96, 40])
def test_hue_extremes_in_every_order_position(size):
    views = [view(size, o, 1.1, 0.9, 1.3, h) for h in (0.5, -0.5, 0.4999, -0.4999)
             for o in ((3, 0, 1, 2), (0, 1, 2, 3), (1, 3, 2, 0))]
    assert_matches(*rows_for(images(size), *views), what=f"hue +-0.5 at {size}")


# sigma 0.1 .. 2 and the values where 3 sigma is a whole number (the radius steps)
SIGMAS = sorted({*np.round(np.linspace(0.1, 2.0, 9), 4), *(k / 3 for k in range(1, 7))})


@pytest.mark.parametrize("size", [96, 40, 13])
def test_blur_sigmas(size):
    views = [view(size, sigma=float(s)) for s in SIGMAS]
    views += [view(size, (2, 3, 1, 0), 1.2, 0.8, 1.1, 0.2, sigma=float(s), gray=True)
              for s in SIGMAS[::2]]
    assert_matches(*rows_for(images(size), *views), what=f"sigmas at {size}")


WIDE = SPEC.with_overrides(blur_sigma=(0.1, 4.0))  # radius 12: the widest compiled


def wide_blur_views(size: int) -> tuple[np.ndarray, np.ndarray]:
    return rows_for(images(size), *[view(size, sigma=s) for s in (2.5, 3.3, 3.9, 4.0)],
                    view(size, (1, 0, 3, 2), 0.9, 1.2, 0.8, 0.3, gray=True, sigma=3.7))


@pytest.mark.parametrize("size", [96, 40])
def test_wide_blur_spec(size):
    assert kernel_consts(WIDE).max_radius == H.load().max_radius == 12
    assert_matches(*wide_blur_views(size), WIDE, what=f"sigma up to 4 at {size}")


@pytest.mark.parametrize("size", [224, 96, 17])
def test_grayscale_blur_solarize_combinations(size):
    views = [view(size, (3, 1, 0, 2), 0.8, 1.3, 0.9, -0.05, gray=g, sigma=s, solarize=z)
             for g in (False, True) for s in (None, 0.1, 0.7, 2.0) for z in (False, True)]
    assert_matches(*rows_for(images(size), *views), what=f"combinations at {size}")


@pytest.mark.parametrize("size", [224, 96, 40, 17])
def test_random_recipes_from_the_stream(size):
    imgs, rows = recipe_batch(size, 2 if size == 224 else 4, seed=size)
    assert {0, 1} <= set(rows[:, COL.jitter]) and {0, 1} <= set(rows[:, COL.blur])
    assert_matches(imgs, rows, what=f"recipes at {size}")


def test_spec_values_reach_the_twin():
    """Another mean/std (random recipes) and another solarize threshold (on exact levels)."""
    spec = SPEC.with_overrides(mean=(0.5, 0.25, 0.0), std=(0.5, 0.125, 2.0),
                               solarize_threshold=200)
    imgs, rows = recipe_batch(96, 2, seed=3)
    rows[:, COL.solarize] = 0.0  # solarize at 200 only where nothing was rounded before
    assert_matches(imgs, rows, spec, "custom mean/std")
    imgs, rows = rows_for(images(96), view(96, solarize=True))
    assert_matches(imgs, rows, spec, "threshold 200")
    assert not np.allclose(run_twin(imgs, rows, spec), run_twin(imgs, rows))


# ------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_outputs_are_the_float32_result_rounded_as_torch_does(dtype):
    imgs, rows = recipe_batch(40, 2, seed=7)
    spec = SPEC.with_overrides(output_dtype=str(dtype).removeprefix("torch."))
    got = H.finish(torch.from_numpy(imgs), torch.from_numpy(rows), spec)
    assert got.dtype == dtype
    want = H.finish(torch.from_numpy(imgs), torch.from_numpy(rows), SPEC).to(dtype)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def special_floats() -> torch.Tensor:
    """Every float16 / bfloat16 rounding case: ties both ways, subnormals, the overflow
    edge, infinities, NaN, signed zeros, and random bit patterns over the whole range."""
    base = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0 ** -14,
            2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -26, 3.0 * 2.0 ** -25,
            1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,
            3.4e38, 1e-40, float("inf"), float("-inf"), float("nan")]
    bits = np.random.default_rng(0).integers(0, 2 ** 32, 200_000, dtype=np.uint64)
    rand = torch.from_numpy(bits.astype(np.uint32).view(np.float32).copy())
    near = torch.linspace(-70000, 70000, 100_001)
    return torch.cat([torch.tensor(base, dtype=torch.float32), rand, near])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conversions_round_as_torch(dtype):
    x = special_floats()
    got, want = H.convert(x, dtype), x.to(dtype)
    nan = torch.isnan(x)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
    assert torch.isnan(got[nan].float()).all()


def test_every_element_is_written_into_given_outputs():
    abi, const = H.load(), kernel_abi.constants(kernel_consts(SPEC))
    batches = [tuple(map(torch.from_numpy, recipe_batch(s, 1, seed=s))) for s in (96, 17)]
    outs = [torch.full((c.shape[0], 3, c.shape[1], c.shape[1]), float("nan")) for c, _ in batches]
    kernel_abi.finish_batches(abi, batches, const, torch.float32, outs=outs)
    assert all(torch.isfinite(o).all() for o in outs)


# ------------------------------------------------------------------------------ entry points
def test_many_sizes_in_one_call_equal_one_call_each():
    batches = [tuple(map(torch.from_numpy, recipe_batch(s, 1, seed=i)))
               for i, s in enumerate((96, 40, 17, 96, 13) * 4)]  # 20 > max_segments
    assert len(batches) > H.load().max_segments
    together = H.finish_many(batches, SPEC)
    for (crops, rows), got in zip(batches, together):
        assert torch.equal(got, H.finish(crops, rows, SPEC))


def test_float32_rows_equal_float64_rows_and_geometry_is_ignored():
    imgs, rows = recipe_batch(40, 2, seed=9)
    moved = rows.copy()
    moved[:, COL.top:COL.flip + 1] = (3.0, 5.0, 7.0, 9.0, 1.0)
    a = run_twin(imgs, rows)
    np.testing.assert_array_equal(a, run_twin(imgs, moved.astype(np.float32)))


def test_input_is_not_modified():
    imgs, rows = recipe_batch(40, 2, seed=4)
    before = imgs.copy()
    run_twin(imgs, rows)
    np.testing.assert_array_equal(imgs, before)


def bad_rows(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Three views: a good one, a jitter order that is no permutation, a too-wide sigma."""
    imgs, rows = rows_for(images(size)[:1], view(size, (0, 1, 2, 3), 1.2, sigma=1.0),
                          view(size, (0, 1, 2, 3), 1.2), view(size, sigma=2.0))
    rows[1, param_row.ORDER] = (0, 1, 1, 3)
    rows[2, COL.sigma] = 50.0
    return imgs, rows


def test_rows_the_kernel_cannot_apply_give_nan_views():
    imgs, rows = bad_rows(40)
    got = run_twin(imgs, rows)
    assert np.isfinite(got[0]).all() and np.isnan(got[1:]).all()
    np.testing.assert_array_equal(got[:1], run_twin(imgs[:1], rows[:1]))


def test_radius_bound_follows_float32_sigma():
    assert kernel_consts(SPEC).max_radius == 6
    assert all(kernel_radius(s) <= kernel_consts(SPEC.with_overrides(
        blur_sigma=(0.1, s))).max_radius for s in (2 / 3, 1.0, 1.1, 4 / 3, 2.0))


def assert_arguments_are_checked(abi: kernel_abi.Abi) -> None:
    """The C side refuses bad calls with a code whose string says what (before touching any
    memory: the CUDA library can be checked on host tensors, without a GPU)."""
    crops = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    rows, out = torch.zeros(2, param_row.WIDTH), torch.empty(2, 3, 16, 16)
    const = kernel_abi.constants(kernel_consts(SPEC))
    with pytest.raises(RuntimeError, match="more segments"):
        kernel_abi.run(abi, [crops] * 17, [rows] * 17, [out] * 17, const)
    with pytest.raises(RuntimeError, match="max_radius"):
        kernel_abi.run(abi, [crops], [rows], [out], kernel_abi.Constants(const.norm, 0.5, 13))
    with pytest.raises(RuntimeError, match="dtype"):
        kernel_abi.run(abi, [crops], [rows.double()], [out.double()], const)
    counts, sizes = (ctypes.c_int * 2)(128, 640), (ctypes.c_int * 2)(224, 96)
    assert abi.workspace_floats(2, counts, sizes) == 128 * 14 + 640 * 6


def test_bad_arguments_get_codes_that_say_what():
    assert_arguments_are_checked(H.load())
    crops = torch.from_numpy(images(16))
    rows = torch.from_numpy(rows_for(images(16), view(16))[1][:2])
    with pytest.raises(ValueError, match=r"uint8 \[N, S, S, 3\]"):
        H.finish(crops.float(), rows, SPEC)
    with pytest.raises(ValueError, match="rows"):
        H.finish(crops, rows[:1], SPEC)
    with pytest.raises(ValueError, match="radius"):
        H.finish(crops, rows, SPEC.with_overrides(blur_sigma=(0.1, 5.0)))


def test_a_library_with_another_row_layout_is_refused(monkeypatch):
    monkeypatch.setattr(kernel_abi, "LAYOUT", kernel_abi.LAYOUT.replace("hue,", "shift,"))
    with pytest.raises(kernel_abi.AbiMismatch, match="rebuild"):
        kernel_abi.bind(H._library(), H.PREFIX)


def test_a_failed_build_names_its_log(tmp_path, monkeypatch):
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\necho 'fake-cxx: error: no compiler here' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("DINO_FAST_CACHE", str(tmp_path / "cache"))
    path = H.library_path()
    with pytest.raises(H.HostTwinUnavailable, match=r"exit status 3.*\.log"):
        H.build(path)
    assert "no compiler here" in path.with_suffix(".log").read_text()
    assert not path.exists()
