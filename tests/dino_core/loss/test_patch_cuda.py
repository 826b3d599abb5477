"""The iBOT patch-loss kernel through the kernel library: source checks everywhere, numbers on
a GPU (the library the loader finds, built with ``dino-build-kernels --arch sm_90``)."""
import pytest
import torch

from dino_core.loss import patch_cuda
from dino_core.loss.cuda import KernelOptions
from pipelines.kernels import build
from tests.dino_core.loss.cases import rel_err
from tests.dino_core.loss.patch_cases import STUDENT_TEMP, grad_unit, make_inputs, reference_run
from tests.dino_core.loss.test_loss_cuda import BOUNDS, CSRC, includes


def test_sources_include_no_torch_and_the_kernel_is_in_the_library():
    assert set(includes(CSRC / "patch_ce_kernel.cu")) == {
        "cuda_runtime.h", "stdint.h", "device_target.h", "dino_loss_device.cuh",
        "patch_ce_kernel.h", "patch_ce_math.h"}
    assert includes(CSRC / "patch_ce_kernel.h") == ["dino_loss_kernel.h"]
    assert includes(CSRC / "patch_ce_math.h") == ["dino_loss_math.h"]
    assert set(includes(CSRC / "patch_ce_host.cpp")) == {"stdint.h", "vector", "patch_ce_math.h"}
    assert "dino_core/loss/csrc/patch_ce_kernel.cu" in build.SOURCES


def test_tensors_off_the_librarys_device_are_named(monkeypatch):
    monkeypatch.delenv(build.ENV_EMULATION, raising=False)
    student, q, weight = make_inputs(2, 8, torch.float32)
    with pytest.raises(ValueError, match="cuda_patch_ce: student is on cpu"):
        patch_cuda.cuda_patch_ce(student, q, weight, STUDENT_TEMP)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("rows,dim", [(1, 7), (37, 1000), (300, 8192), (64, 65536)])
@pytest.mark.parametrize("in_forward", [True, False], ids=["grad in forward", "in backward"])
def test_kernel_matches_the_reference_on_a_gpu(dtype, rows, dim, in_forward):
    student, q, weight = make_inputs(rows, dim, dtype, seed=dim)
    student, q, weight = student.cuda(), q.cuda(), weight.cuda()
    upstream = -2.5
    s = student.clone().requires_grad_()
    loss = patch_cuda.cuda_patch_ce(s, q, weight, STUDENT_TEMP,
                                    KernelOptions(gradient_in_forward=in_forward))
    (loss * upstream).backward()
    ref_loss, ref_grad = reference_run(student, q, weight, upstream)
    assert rel_err(loss, ref_loss) <= (1e-12 if dtype == torch.float64 else 1e-5)
    torch.testing.assert_close(s.grad.double(), ref_grad, rtol=2 * BOUNDS[dtype],
                               atol=grad_unit(weight, upstream)
                               * (1e-12 if dtype == torch.float64 else 5e-5))
