"""The CUDA kernels through the kernel library: source checks everywhere, numbers on a GPU.

The library these GPU tests use is the one the loader finds (``pipelines/kernels/lib/`` or
``$DINO_FAST_KERNELS``), built ahead of time with ``dino-build-kernels --arch sm_90``.
"""
import logging
import re

import pytest
import torch

from pipelines.kernels import build, library
from dino_core.loss import DINOLoss
from dino_core.loss import cuda as cuda_ext
from dino_core.loss.cuda import KernelOptions
from tests.dino_core.loss.cases import TEMPS, loss_and_grad, make_logits, rel_err

CSRC = build.ROOT / "dino_core" / "loss" / "csrc"
TEACHER_TEMP = 0.04


def includes(path):
    return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.M)


def test_sources_include_no_torch_and_the_math_header_builds_for_the_host():
    cuda_headers = {"cooperative_groups.h", "cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h",
                    "stdint.h"}
    assert set(includes(CSRC / "dino_loss_kernel.cu")) == {
        "cuda_runtime.h", "stdint.h", "dino_loss_kernel.h", "dino_loss_kernels.cuh"}
    assert set(includes(CSRC / "dino_loss_kernels.cuh")) == {"dino_loss_device.cuh"}
    assert set(includes(CSRC / "dino_loss_device.cuh")) == cuda_headers | {
        "dino_loss_math.h", "device_target.h"}  # pipelines/kernels/csrc: nvcc or emulation
    assert includes(CSRC / "dino_loss_kernel.h") == []
    assert includes(CSRC / "dino_loss_math.h") == ["math.h"]
    assert set(includes(CSRC / "dino_loss_host.cpp")) == {"stdint.h", "vector",
                                                          "dino_loss_math.h"}
    assert "dino_core/loss/csrc/dino_loss_kernel.cu" in build.SOURCES


def test_no_torch_extension_build_remains():
    """The host twins are the only C++ files: no torch binding, no JIT build."""
    assert sorted(p.name for p in CSRC.glob("*.cpp")) == ["dino_loss_host.cpp",
                                                          "patch_ce_host.cpp"]
    assert "cpp_extension" not in (build.ROOT / "dino_core" / "loss" / "cuda.py").read_text()


def test_tensors_off_the_librarys_device_are_named(monkeypatch):
    """The CUDA library takes tensors of one CUDA device: a CPU tensor is a ValueError naming
    it, checked before any pointer reaches a kernel (issue 28 §2.5)."""
    monkeypatch.delenv(build.ENV_EMULATION, raising=False)
    student, teacher, center = make_logits(1, 2, 8, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match="cuda_dino_loss: student_output is on cpu; the CUDA "
                                         "kernels take tensors on a CUDA device"):
        cuda_ext.cuda_dino_loss(student, teacher, center, TEACHER_TEMP, 2, 0.1)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_dino_loss: center is on cpu"):
            cuda_ext.cuda_dino_loss(student.cuda(), teacher.cuda(), center, TEACHER_TEMP, 2, 0.1)


# ----------------------------------------------------------------------------- on a GPU
def gpu_logits(batch, ncrops, dim, dtype, seed=0):
    return make_logits(batch, ncrops, dim, seed, dtype=dtype, device="cuda")


def acc_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def cuda_run(student, teacher, center, ncrops, upstream=1.0, overwrite=False,
             options=KernelOptions()):
    """(loss, gradient of upstream * loss, the logits after the backward) from non-leaf
    logits, as a head makes them."""
    logits = student.clone().requires_grad_().mul(1.0)
    loss = cuda_ext.cuda_dino_loss(logits, teacher, center, TEACHER_TEMP, ncrops, 0.1,
                                   overwrite_logits=overwrite, options=options)
    (grad,) = torch.autograd.grad(loss * upstream, logits)
    return loss.detach(), grad, logits.detach()


def reference_run(student, teacher, center, ncrops, upstream=1.0):
    from dino_core.loss.reference import reference_dino_loss
    s = student.double().clone().requires_grad_()
    loss = reference_dino_loss(s, teacher.double(), center.double(), TEACHER_TEMP, ncrops, 0.1)
    (grad,) = torch.autograd.grad(loss * upstream, s)
    return loss.detach(), grad


def grad_err(actual, expected, ncrops, batch, upstream=1.0):
    """max |diff| in units of the gradient's scale |u| / (tau P B) (see the host twin test)."""
    unit = abs(upstream) / (0.1 * (2 * ncrops - 2) * batch)
    return ((actual.double() - expected.double()).abs().max() / unit).item()


LAYOUTS = {
    "default": KernelOptions(),
    "gradient in backward": KernelOptions(gradient_in_forward=False),
    "streaming": KernelOptions(allow_resident=False),
    "no clusters": KernelOptions(max_clusters=1),
    "no clusters, streaming, backward": KernelOptions(False, 1, False),
}
BOUNDS = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2.0 ** -7,
          torch.float16: 2.0 ** -9}


@pytest.mark.gpu
@pytest.mark.parametrize("batch,ncrops,dim", [(1, 2, 3), (3, 4, 17), (2, 12, 1000),
                                              (4, 10, 4096), (2, 6, 65536), (3, 20, 2048)])
def test_cuda_module_equals_reference_in_float64(batch, ncrops, dim):
    """Through DINOLoss (its center is updated after the forward), upstream 1.7."""
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float64)
    ref = loss_and_grad("reference", student, teacher, center, ncrops, 1, upstream=1.7)
    out = loss_and_grad("cuda", student, teacher, center, ncrops, 1, upstream=1.7)
    assert rel_err(out[0], ref[0]) <= 1e-12
    assert grad_err(out[1], ref[1], ncrops, batch, 1.7) <= 1e-12
    torch.testing.assert_close(out[2], ref[2], rtol=1e-12, atol=1e-15)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("dim", [4096, 4099, 65536])  # 16-byte and scalar paths; resident
def test_every_layout_and_dtype_matches_the_reference(layout, dtype, dim):
    ncrops, batch = 12, 3
    student, teacher, center = gpu_logits(batch, ncrops, dim, dtype, seed=dim)
    center = center.to(acc_of(dtype))
    for upstream in (1.0, -2.5):
        loss, grad, _ = cuda_run(student, teacher, center, ncrops, upstream,
                                 options=LAYOUTS[layout])
        ref_loss, ref_grad = reference_run(student, teacher, center, ncrops, upstream)
        assert grad.dtype == dtype and loss.dtype == acc_of(dtype)
        assert rel_err(loss, ref_loss) <= (1e-12 if dtype == torch.float64 else 1e-5)
        # bf16/fp16: one rounding of the scaled gradient (two when upstream != 1 is applied
        # after the forward wrote it)
        unit = abs(upstream) / (0.1 * (2 * ncrops - 2) * batch)  # the gradient's scale
        torch.testing.assert_close(grad.double(), ref_grad, rtol=2 * BOUNDS[dtype],
                                   atol=unit * (1e-12 if dtype == torch.float64 else 5e-5))


@pytest.mark.gpu
def test_plan_keeps_the_recipe_on_chip_with_clusters():
    """B=64-style shapes: 12 views, K=65536, bf16 -> 16-block clusters of 4096 columns, the
    logits resident in shared memory; float64 at that size cannot be resident."""
    device = torch.cuda.current_device()
    plan = cuda_ext.plan_for(device, torch.bfloat16, 12, 65536)
    if torch.cuda.get_device_capability()[0] >= 9:
        assert (plan.clusters, plan.chunk, plan.resident) == (16, 4096, 1)
    assert plan.smem_bytes >= 12 * plan.chunk * 2
    wide = cuda_ext.plan_for(device, torch.float64, 12, 65536)
    assert wide.resident == 0 and wide.clusters * wide.chunk >= 65536
    assert cuda_ext.plan_for(device, torch.bfloat16, 12, 65536, max_clusters=1).clusters == 1


@pytest.mark.gpu
@pytest.mark.parametrize("in_forward", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [4096, 4099])
def test_overwrite_logits_is_bit_identical_to_out_of_place(in_forward, dtype, dim):
    ncrops, batch = 12, 4
    student, teacher, center = gpu_logits(batch, ncrops, dim, dtype, seed=dim)
    assert_overwrite_is_out_of_place(student, teacher, center.to(acc_of(dtype)), ncrops,
                                     KernelOptions(gradient_in_forward=in_forward))


def assert_overwrite_is_out_of_place(student, teacher, center, ncrops, options):
    """Loss and gradient written over the logits equal the out-of-place ones, bit for bit."""
    for upstream in (1.0, -2.5):
        loss_out, grad_out, logits_out = cuda_run(student, teacher, center, ncrops, upstream,
                                                  False, options)
        loss_in, grad_in, logits_in = cuda_run(student, teacher, center, ncrops, upstream,
                                               True, options)
        assert torch.equal(loss_in, loss_out) and torch.equal(grad_in, grad_out)
        assert torch.equal(logits_out, student) and torch.equal(logits_in, grad_in)
        assert grad_in.data_ptr() == logits_in.data_ptr()


@pytest.mark.gpu
def test_float16_folds_the_loss_scale_in_before_rounding():
    """GradScaler-sized upstream (2^16): the backward writes u * gradient in one rounding, so
    entries below float16's range before scaling survive (they would flush to 0 if the
    forward wrote the unscaled gradient)."""
    ncrops, batch, dim = 12, 8, 4096
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float16, seed=5)
    center = center.float()
    upstream = 2.0 ** 16
    _, grad, _ = cuda_run(student, teacher, center, ncrops, upstream)
    _, ref = reference_run(student, teacher, center, ncrops, upstream)
    tiny = (ref.abs() / upstream < 2.0 ** -24) & (ref.abs() > 2.0 ** -14)  # flushed unscaled
    assert tiny.sum() > 0
    assert (grad[tiny] != 0).all()
    torch.testing.assert_close(grad.double(), ref, rtol=2.0 ** -9, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("in_forward", [True, False])
def test_overwrite_bumps_the_version_so_other_savers_fail(in_forward):
    ncrops, batch, dim = 4, 2, 256
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float32, seed=2)
    logits = student.clone().requires_grad_().mul(1.0)
    other = torch.sin(logits).sum()
    loss = cuda_ext.cuda_dino_loss(logits, teacher, center.float(), TEACHER_TEMP, ncrops, 0.1,
                                   overwrite_logits=True,
                                   options=KernelOptions(gradient_in_forward=in_forward))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


@pytest.mark.gpu
def test_second_and_double_backward_are_refused_or_repeat_exactly():
    ncrops, batch, dim = 5, 3, 2048
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.float32, seed=3)
    center = center.float()

    def loss_of(overwrite, in_forward):
        logits = student.clone().requires_grad_().mul(1.0)
        return logits, cuda_ext.cuda_dino_loss(
            logits, teacher, center, TEACHER_TEMP, ncrops, 0.1, overwrite_logits=overwrite,
            options=KernelOptions(gradient_in_forward=in_forward))

    logits, loss = loss_of(False, True)
    torch.autograd.grad(loss, logits, retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        torch.autograd.grad(loss, logits)
    logits, loss = loss_of(True, True)
    torch.autograd.grad(loss, logits, retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, logits)
    logits, loss = loss_of(False, False)  # from saved statistics: repeatable
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0].clone()
    assert torch.equal(torch.autograd.grad(loss, logits)[0], first)
    logits, loss = loss_of(False, True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


@pytest.mark.gpu
def test_without_gradient_only_the_loss_is_computed_and_logits_stay():
    ncrops, batch, dim = 4, 2, 512
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.bfloat16, seed=4)
    logits = student.clone()
    with torch.no_grad():
        loss = cuda_ext.cuda_dino_loss(logits, teacher, center.float(), TEACHER_TEMP, ncrops,
                                       0.1, overwrite_logits=True)
    assert torch.equal(logits, student)
    assert rel_err(loss, reference_run(student, teacher, center, ncrops)[0]) <= 1e-5


@pytest.mark.gpu
def test_misaligned_inputs_take_the_scalar_path():
    ncrops, batch, dim = 4, 2, 4096
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.bfloat16, seed=6)
    buffer = torch.empty(student.numel() + 1, dtype=student.dtype, device="cuda")
    buffer[1:].copy_(student.flatten())
    buffer.requires_grad_()
    shifted = buffer[1:].view_as(student)  # contiguous, 2 bytes off a 16-byte boundary
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    loss = cuda_ext.cuda_dino_loss(shifted, teacher, center.float(), TEACHER_TEMP, ncrops, 0.1)
    (grad,) = torch.autograd.grad(loss, shifted)
    ref_loss, ref_grad = reference_run(student, teacher, center, ncrops)
    assert rel_err(loss, ref_loss) <= 1e-5
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2.0 ** -7, atol=1e-7)


@pytest.mark.gpu
def test_loss_and_backward_replay_under_cuda_graph_capture():
    """The benchmark's timing mode: a captured call replays with new logits in its inputs."""
    ncrops, batch, dim = 12, 4, 8192
    student, teacher, center = gpu_logits(batch, ncrops, dim, torch.bfloat16, seed=8)
    center = center.float()
    logits = student.clone().requires_grad_()
    static_teacher = teacher.clone()

    def step():
        loss = cuda_ext.cuda_dino_loss(logits * 1.0, static_teacher, center, TEACHER_TEMP,
                                       ncrops, 0.1)
        return loss, torch.autograd.grad(loss, logits)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up (plans the layout) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grad = step()
    new_student, new_teacher, _ = gpu_logits(batch, ncrops, dim, torch.bfloat16, seed=9)
    with torch.no_grad():
        logits.copy_(new_student)
        static_teacher.copy_(new_teacher)
    graph.replay()
    torch.cuda.synchronize()
    ref_loss, ref_grad = reference_run(new_student, new_teacher, center, ncrops)
    assert rel_err(loss, ref_loss) <= 1e-5
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2.0 ** -7, atol=1e-7)


@pytest.mark.gpu
def test_auto_picks_cuda_and_logs_the_library_once(caplog):
    student, teacher, _ = gpu_logits(2, 4, 64, torch.float32)
    loss_fn = DINOLoss(64, 4, impl="auto").cuda()
    with caplog.at_level(logging.INFO, logger="dino_core.loss"):
        loss_fn(student, teacher, TEMPS[0])
        loss_fn(student, teacher, TEMPS[1])
    lines = [r.getMessage() for r in caplog.records if "DINO loss: using" in r.getMessage()]
    assert len(lines) == 1 and "using the cuda implementation" in lines[0], lines
    assert str(library.library_path()) in lines[0]


@pytest.mark.gpu
def test_without_the_library_auto_falls_back_and_cuda_says_what_to_do(monkeypatch, tmp_path,
                                                                      caplog):
    missing = tmp_path / build.LIBRARY_NAME
    monkeypatch.setenv(build.ENV_LIBRARY, str(missing))
    library.clear_cache()
    try:
        student, teacher, _ = gpu_logits(2, 4, 64, torch.float32)
        with caplog.at_level(logging.INFO, logger="dino_core.loss"):
            DINOLoss(64, 4, impl="auto").cuda()(student, teacher, TEMPS[0])
        lines = [r.getMessage() for r in caplog.records if "DINO loss: using" in r.getMessage()]
        assert len(lines) == 1 and "using the fused implementation" in lines[0]
        assert f"no kernel library at {missing}" in lines[0] and "dino-build-kernels" in lines[0]
        with pytest.raises(RuntimeError, match="impl='cuda': the CUDA kernels are unavailable"):
            DINOLoss(64, 4, impl="cuda").cuda()(student, teacher, TEMPS[0])
    finally:
        monkeypatch.undo()
        library.clear_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_torch_path_on_cuda_equals_reference(dtype):
    """The fallback when the kernel library is unavailable (its softmaxes run in place)."""
    student, teacher, center = gpu_logits(4, 12, 65536, dtype, seed=3)
    ref = loss_and_grad("reference", student.double(), teacher.double(), center, 12, 1)
    out = loss_and_grad("fused", student, teacher, center.to(dtype), 12, 1)
    bound = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(out[0], ref[0]) <= bound
    assert rel_err(out[1], ref[1]) <= bound
