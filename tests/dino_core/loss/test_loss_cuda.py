"""The CUDA kernels: compile checks everywhere, numerical checks on a GPU (marked gpu)."""
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.loss import cuda as cuda_ext
from tests.dino_core.loss.cases import SCHEDULE, loss_and_grad, make_logits, rel_err

# The flags torch's extension builder passes to nvcc, so the check sees what a build sees.
TORCH_NVCC_FLAGS = ["-std=c++17", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
                    "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
                    "-D__CUDA_NO_HALF2_OPERATORS__"]


def includes(path):
    return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.M)


def test_kernel_includes_only_cuda_headers_and_binding_no_cuda_headers():
    assert set(includes(cuda_ext.KERNEL_SOURCE)) <= {
        "cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "math_constants.h", "stdint.h",
        "dino_loss_kernel.h"}
    assert includes(cuda_ext.CSRC / "dino_loss_kernel.h") == []
    assert set(includes(cuda_ext.BINDING_SOURCE)) == {"torch/extension.h", "climits", "vector",
                                                      "dino_loss_kernel.h"}


def test_kernel_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the CUDA kernel compile check needs it")
    cmd = [nvcc, "-c", "-arch=sm_90", "-O3", "--Werror", "all-warnings", *TORCH_NVCC_FLAGS,
           str(cuda_ext.KERNEL_SOURCE), "-o", str(tmp_path / "dino_loss_kernel.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dino_loss_kernel.o").stat().st_size > 0


@pytest.mark.slow  # about 30 s of g++ on the torch headers
def test_binding_compiles_against_torch_headers():
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    from torch.utils.cpp_extension import include_paths
    flags = [f for p in include_paths() for f in ("-isystem", p)]
    flags += ["-isystem", sysconfig.get_paths()["include"]]
    cmd = [cxx, "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-Werror",
           "-DTORCH_EXTENSION_NAME=dino_loss_check", "-DTORCH_API_INCLUDE_EXTENSION_H", *flags,
           str(cuda_ext.BINDING_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_extension_reports_why_it_is_unavailable():
    reason = cuda_ext.unavailable_reason()
    if reason is None:  # a GPU machine where the build succeeded
        ext = cuda_ext.load_extension()
        assert all(hasattr(ext, name) for name in ("student_forward", "student_loss",
                                                   "student_grad_inplace", "teacher_probs"))
    else:
        assert not torch.cuda.is_available() or "failed" in reason or "not" in reason
        with pytest.raises(RuntimeError, match="CUDA extension is unavailable"):
            cuda_ext.load_extension()


# ----------------------------------------------------------------------------- on a GPU
def gpu_logits(batch, ncrops, dim, dtype, seed=0):
    return make_logits(batch, ncrops, dim, seed, dtype=dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("batch,ncrops,dim", [(1, 2, 3), (3, 4, 17), (2, 12, 1000),
                                              (4, 10, 4096), (2, 6, 65536)])
def test_cuda_equals_reference_in_float64(batch, ncrops, dim):
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float64)
    ref = loss_and_grad("reference", student, teacher, center, ncrops, 1, upstream=1.7)
    out = loss_and_grad("cuda", student, teacher, center, ncrops, 1, upstream=1.7)
    assert rel_err(out[0], ref[0]) <= 1e-10
    assert rel_err(out[1], ref[1]) <= 1e-10
    torch.testing.assert_close(out[2], ref[2], rtol=1e-12, atol=1e-15)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2.0 ** -8),
                                        (torch.float16, 2.0 ** -10)])
@pytest.mark.parametrize("dim", [4096, 4099])  # vectorised and scalar paths
def test_cuda_lower_precision_within_bounds(dtype, rtol, dim):
    ncrops, batch = 12, 8
    student, teacher, center = gpu_logits(batch, ncrops, dim, dtype, seed=dim)
    out = loss_and_grad("cuda", student, teacher, center.float(), ncrops, 1)
    ref = loss_and_grad("reference", student.double(), teacher.double(), center, ncrops, 1)
    assert out[1].dtype == dtype
    assert rel_err(out[0], ref[0]) <= 1e-5
    torch.testing.assert_close(out[1].double(), ref[1], rtol=rtol, atol=1e-7)


@pytest.mark.gpu
def test_cuda_teacher_kernel_matches_torch_softmax():
    student, teacher, center = gpu_logits(4, 2, 1001, torch.float32)
    q = cuda_ext.cuda_teacher_probs(teacher, center.float(), 0.04)
    expected = torch.softmax((teacher.double() - center) / 0.04, dim=-1)
    torch.testing.assert_close(q.double(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
def test_auto_picks_cuda_on_gpu():
    student, teacher, _ = gpu_logits(2, 4, 64, torch.float32)
    loss_fn = DINOLoss(64, 4, impl="auto", **SCHEDULE).cuda()
    assert loss_fn.resolve_impl(student) == "cuda", cuda_ext.unavailable_reason()


@pytest.mark.gpu
def test_cuda_gradient_rows_sum_to_zero_and_second_backward_is_refused():
    student, teacher, center = gpu_logits(3, 5, 2048, torch.float32)
    loss_fn = DINOLoss(2048, 5, impl="cuda", **SCHEDULE).cuda()
    s = student.clone().requires_grad_()
    loss = loss_fn(s, teacher, 0)
    loss.backward(retain_graph=True)
    assert (s.grad.sum(dim=1).abs() <= 1e-5 * s.grad.abs().sum(dim=1)).all()
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_torch_path_on_cuda_equals_reference(dtype):
    """The fallback when the extension is unavailable (its softmaxes run in place)."""
    student, teacher, center = gpu_logits(4, 12, 65536, dtype, seed=3)
    ref = loss_and_grad("reference", student.double(), teacher.double(), center, 12, 1)
    out = loss_and_grad("fused", student, teacher, center.to(dtype), 12, 1)
    bound = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(out[0], ref[0]) <= bound
    assert rel_err(out[1], ref[1]) <= bound


def cuda_pair(student, q, ncrops, upstream, inplace):
    """Loss, gradient of ``upstream * loss`` and the logits after the backward, from
    non-leaf logits (as a head makes them)."""
    logits = student.clone().requires_grad_().mul(1.0)
    loss = cuda_ext.cuda_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=inplace)
    (grad,) = torch.autograd.grad(loss * upstream, logits)
    return loss.detach(), grad, logits.detach()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [4096, 4099])  # vectorised and scalar paths
def test_cuda_overwrite_logits_equals_out_of_place(dtype, dim):
    """Same kernel code, gradient written over the logits in the backward: bit-identical for
    a unit upstream gradient (the scale is then the same number), within one rounding of
    the dtype otherwise (in place folds the upstream factor in before rounding)."""
    ncrops, batch = 12, 4
    student, teacher, center = gpu_logits(batch, ncrops, dim, dtype, seed=dim)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q = cuda_ext.cuda_teacher_probs(teacher, center.to(acc), 0.04)
    loss_out, grad_out, logits_out = cuda_pair(student, q, ncrops, 1.0, inplace=False)
    loss_in, grad_in, logits_in = cuda_pair(student, q, ncrops, 1.0, inplace=True)
    assert torch.equal(loss_in, loss_out) and torch.equal(grad_in, grad_out)
    assert torch.equal(logits_out, student) and torch.equal(logits_in, grad_out)
    assert grad_in.data_ptr() == logits_in.data_ptr()
    scaled_out = cuda_pair(student, q, ncrops, -2.5, inplace=False)[1]
    scaled_in = cuda_pair(student, q, ncrops, -2.5, inplace=True)[1]
    rtol = {torch.float64: 1e-15, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -7}[dtype]
    torch.testing.assert_close(scaled_in.double(), scaled_out.double(), rtol=rtol, atol=1e-12)


@pytest.mark.gpu
def test_cuda_overwrite_logits_bumps_the_version_counter():
    """The kernel writes through a raw pointer; the binding's caller bumps the version, so a
    node that saved the logits and runs later fails instead of reading the gradient."""
    ncrops, batch, dim = 4, 2, 256
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float32, seed=2)
    q = cuda_ext.cuda_teacher_probs(teacher, center.float(), 0.04)
    logits = student.clone().requires_grad_().mul(1.0)
    other = torch.sin(logits).sum()
    loss = cuda_ext.cuda_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()
