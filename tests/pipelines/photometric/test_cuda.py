"""pipelines.photometric.cuda: the fused CUDA kernel against its host twin and the torch ops.

GPU tests (marked gpu) need the kernel library built with the photometric kernel in it
(``dino-build-kernels``); on a GPU machine an unavailable kernel is a failure, not a skip.
Tolerances: float32 within ``ATOL`` = 1e-5 of the host twin and of the torch ops on the
CPU (the same formulas; the GPU contracts multiply-adds into FMAs and reduces the contrast
mean per warp: a few 1e-7); within test_cpu_kernel's 2e-5 of the torch ops on the GPU
(cuDNN's convolution sums the blur in its own order). 16-bit outputs: within half a unit
in the last place of the float32 result (plus ATOL), and equal to the twin's 16-bit output
almost everywhere (they differ only where the float32 results straddle a rounding tie).

CPU tests here: the kernel source compiles with nvcc (when installed) into a library whose
exported functions, row layout and argument checks are those ``kernel_abi`` declares, and
without a GPU ``cuda`` says why it is unavailable.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from pipelines.kernels import build
from pipelines.photometric import cuda as C
from pipelines.photometric import finish as F
from pipelines.photometric import host_twin as H
from pipelines.photometric import kernel_abi
from tests.pipelines.photometric.test_cpu_kernel import ATOL as TORCH_GPU_ATOL
from tests.pipelines.photometric.test_cpu_kernel import SPEC
from tests.pipelines.photometric.test_cpu_kernel import twin as torch_twin
from tests.pipelines.photometric.test_host_twin import (WIDE, assert_arguments_are_checked,
                                                         bad_rows, recipe_batch, wide_blur_views)

ATOL = 1e-5
KERNEL = H.CSRC / "photometric_kernel.cu"


# ------------------------------------------------------------------------------ CPU checks
def nvcc_library(folder) -> ctypes.CDLL:
    """The kernel source built as the kernel library builds it (sm_90, static cudart),
    cached by a digest of the sources."""
    sources = sorted([*H.CSRC.iterdir(), *build.TARGET_INCLUDE.iterdir()])
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    path = H.cache_dir() / f"libphotometric_cuda-{digest[:16]}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = folder / path.name
        cmd = ["nvcc", "-O3", "-std=c++17", "-shared", "-cudart", "static", "-Xcompiler",
               "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-I", str(build.TARGET_INCLUDE),
               "-gencode", "arch=compute_90,code=sm_90", str(KERNEL), "-o", str(partial)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        os.replace(partial, path)
    return ctypes.CDLL(str(path))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_kernel_builds_with_nvcc_and_exports_the_declared_abi(tmp_path):
    abi = kernel_abi.bind(nvcc_library(tmp_path), C.PREFIX)  # checks the row layout
    assert (abi.max_segments, abi.max_radius) == (H.load().max_segments, H.load().max_radius)
    assert_arguments_are_checked(abi)
    assert abi.error_string(2) == b"out of memory"  # CUDA's own codes pass through


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_a_gpu_the_kernel_says_why_and_finish_falls_back():
    reason = C.unavailable_reason()
    assert reason and ("CUDA" in reason or "CPU-only" in reason)
    assert F._auto("cuda") == ("torch", reason)
    with pytest.raises(RuntimeError, match="unavailable"):
        C.finish(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.zeros(1, 18), SPEC)


# ------------------------------------------------------------------------------ GPU
@pytest.fixture(scope="module")
def gpu():
    reason = C.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the CUDA photometric kernel is unavailable on this GPU machine: {reason}")
    return torch.device("cuda")


def on(device, imgs: np.ndarray, rows: np.ndarray):
    return torch.from_numpy(imgs).to(device), torch.from_numpy(rows).to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("size,n_images", [(224, 8), (96, 16), (17, 4)])
@pytest.mark.parametrize("rows_dtype", [np.float64, np.float32])
def test_matches_twin_and_torch_ops_on_recipes(gpu, size, n_images, rows_dtype):
    imgs, rows = recipe_batch(size, n_images, seed=size)
    rows = rows.astype(rows_dtype)
    crops, drows = on(gpu, imgs, rows)
    got = C.finish(crops, drows, SPEC)
    assert got.dtype == torch.float32 and got.shape == (len(rows), 3, size, size)
    got = got.cpu().numpy()
    for name, want in (("host twin", H.finish(torch.from_numpy(imgs), torch.from_numpy(rows),
                                              SPEC).numpy()),
                       ("torch_ops (CPU)", torch_twin(imgs, rows.astype(np.float64)))):
        err = np.abs(got - want).reshape(len(rows), -1).max(axis=1)
        assert err.max() <= ATOL, f"{name}: {err.max():.2e} at row {rows[err.argmax()]}"
    torch.backends.cudnn.allow_tf32, before = False, torch.backends.cudnn.allow_tf32
    try:
        gpu_torch = F.finish_views(crops, drows, SPEC, impl="torch").cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert np.abs(got - gpu_torch).max() <= TORCH_GPU_ATOL


@pytest.mark.gpu
@pytest.mark.parametrize("size", [96, 40])
def test_wide_blur_spec_beyond_48_kib_of_shared_memory(gpu, size):
    imgs, rows = wide_blur_views(size)
    got = C.finish(*on(gpu, imgs, rows), WIDE).cpu()
    want = H.finish(torch.from_numpy(imgs), torch.from_numpy(rows), WIDE)
    assert (got - want).abs().max() <= ATOL


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,half_ulp",
                         [(torch.bfloat16, 2.0 ** -8), (torch.float16, 2.0 ** -11)])
def test_16_bit_outputs_within_their_rounding(gpu, dtype, half_ulp):
    spec = SPEC.with_overrides(output_dtype=str(dtype).removeprefix("torch."))
    imgs, rows = recipe_batch(96, 16, seed=5)
    got = C.finish(*on(gpu, imgs, rows), spec).cpu()
    assert got.dtype == dtype
    exact = H.finish(torch.from_numpy(imgs), torch.from_numpy(rows), SPEC)
    assert ((got.float() - exact).abs() <= half_ulp * exact.abs() + ATOL).all()
    same = got.view(torch.int16) == H.finish(torch.from_numpy(imgs), torch.from_numpy(rows),
                                             spec).view(torch.int16)
    assert same.float().mean() >= 0.999


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [224, 96, 17])
def test_poisoned_outputs_are_fully_written(gpu, size, dtype):
    spec = SPEC.with_overrides(output_dtype=str(dtype).removeprefix("torch."))
    imgs, rows = recipe_batch(size, 2, seed=1)
    out = torch.full((len(rows), 3, size, size), float("nan"), dtype=dtype, device=gpu)
    C.finish(*on(gpu, imgs, rows), spec, out=out)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_unaligned_buffers_take_the_scalar_paths_and_agree(gpu):
    imgs, rows = recipe_batch(96, 4, seed=2)
    crops, drows = on(gpu, imgs, rows)
    want = C.finish(crops, drows, SPEC)
    raw = torch.empty(crops.numel() + 1, dtype=torch.uint8, device=gpu)
    shifted = raw[1:].view(crops.shape)  # 1 byte off: byte loads
    shifted.copy_(crops)
    flat = torch.full((want.numel() + 1,), float("nan"), device=gpu)
    out = flat[1:].view(want.shape)  # 4 bytes off: element stores
    C.finish(shifted, drows, SPEC, out=out)
    assert torch.equal(out, want)


@pytest.mark.gpu
def test_many_sizes_in_one_call_equal_one_call_each(gpu):
    batches = [on(gpu, *recipe_batch(s, 1, seed=i))
               for i, s in enumerate((224, 96, 40, 17) * 5)]  # 20 > max segments
    together = C.finish_many(batches, SPEC)
    for (crops, rows), got in zip(batches, together):
        assert torch.equal(got, C.finish(crops, rows, SPEC))


@pytest.mark.gpu
def test_rows_the_kernel_cannot_apply_give_nan_views(gpu):
    imgs, rows = bad_rows(40)
    got = C.finish(*on(gpu, imgs, rows), SPEC).cpu()
    assert torch.isfinite(got[0]).all() and torch.isnan(got[1:]).all()


@pytest.mark.gpu
def test_no_host_sync_per_call(gpu):
    (c1, r1), (c2, r2) = on(gpu, *recipe_batch(224, 2, 3)), on(gpu, *recipe_batch(96, 2, 4))
    for _ in range(2):  # warm-up: the library is loaded, the constants built
        C.finish(c1, r1, SPEC), C.finish_many([(c1, r1), (c2, r2)], SPEC)
        F.finish_views(c2, r2, SPEC, impl="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        C.finish(c1, r1, SPEC)
        C.finish_many([(c1, r1), (c2, r2)], SPEC)
        F.finish_views(c2, r2, SPEC, impl="cuda")
        F.finish_views(c2, r2.float(), SPEC)  # auto: the kernel
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert F.finisher("cuda") is C.finish


@pytest.mark.gpu
def test_captured_in_a_cuda_graph_and_on_a_side_stream(gpu):
    (c1, r1), (c2, r2) = on(gpu, *recipe_batch(224, 2, 6)), on(gpu, *recipe_batch(96, 2, 7))
    want = C.finish_many([(c1, r1), (c2, r2)], SPEC)
    static = [(torch.zeros_like(c1), torch.zeros_like(r1)), (torch.zeros_like(c2), r2.clone())]
    C.finish_many(static, SPEC)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            outs = C.finish_many(static, SPEC)
    torch.cuda.current_stream().wait_stream(side)
    static[0][0].copy_(c1), static[0][1].copy_(r1), static[1][0].copy_(c2)
    graph.replay()
    for got, w in zip(outs, want):
        assert torch.equal(got, w)
    with torch.cuda.stream(side):
        other = C.finish(c2, r2, SPEC)
    side.synchronize()
    assert torch.equal(other, want[1])
