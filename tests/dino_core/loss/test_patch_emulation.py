"""The iBOT patch-loss kernel's device code, run on the CPU emulation, through the Python glue.

``csrc/patch_ce_kernel.cu`` and ``dino_core/loss/patch_cuda.py`` run as on a GPU
(``pipelines/kernels/emulation``: one OS thread per CUDA thread) on CPU tensors; loss and
gradient are held to reference_patch_ce in float64 with the DINO kernel's GPU bounds, and
float32/float64 also to the host twin. Every M in {1, 5, 37}, K in {7, 65, 1000} (fewer
columns than threads, a partial last sweep, several sweeps) and dtype appears, with the
gradient written in the forward and in the backward, and an upstream gradient other than 1.
"""
import pytest
import torch

from dino_core.loss import ibot, patch_cuda
from dino_core.loss.cuda import KernelOptions
from pipelines.kernels import build
from tests.dino_core.loss.cases import rel_err
from tests.dino_core.loss.patch_cases import (STUDENT_TEMP, build_twin, grad_unit, make_inputs,
                                              reference_run, twin_run)
from tests.dino_core.loss.test_loss_cuda import BOUNDS
from tests.pipelines.kernels.emulation import emulated, emulation_library  # noqa: F401

pytestmark = pytest.mark.device_emulation
IN_FORWARD, IN_BACKWARD = KernelOptions(gradient_in_forward=True), KernelOptions(False)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return build_twin(tmp_path_factory.mktemp("patch_twin"))


def kernel_run(student, q, weight, upstream, options=KernelOptions()):
    s = student.clone().requires_grad_()
    loss = patch_cuda.cuda_patch_ce(s, q, weight, STUDENT_TEMP, options)
    (loss * upstream).backward()
    return loss.detach(), s.grad


def assert_matches_reference(student, q, weight, upstream, loss, grad):
    dtype = student.dtype
    ref_loss, ref_grad = reference_run(student, q, weight, upstream)
    assert grad.dtype == dtype and grad.shape == student.shape
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(loss, ref_loss) <= (1e-12 if dtype == torch.float64 else 1e-5)
    unit = grad_unit(weight, upstream)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2 * BOUNDS[dtype],
                               atol=unit * (1e-12 if dtype == torch.float64 else 5e-5))


# (dtype, M, K, options, upstream gradients); a block is about a tenth of a second here
CASES = {
    "f32 M=37 K=1000": (torch.float32, 37, 1000, KernelOptions(), (-2.5,)),
    "f32 M=5 K=65 grad in backward": (torch.float32, 5, 65, IN_BACKWARD, (1.0, -2.5)),
    "f64 M=5 K=7": (torch.float64, 5, 7, KernelOptions(), (1.0, -2.5)),
    "f64 M=1 K=65 grad in backward": (torch.float64, 1, 65, IN_BACKWARD, (-2.5,)),
    "bf16 M=5 K=1000": (torch.bfloat16, 5, 1000, KernelOptions(), (-2.5,)),
    "bf16 M=1 K=7 grad in backward": (torch.bfloat16, 1, 7, IN_BACKWARD, (-2.5,)),
    "f16 M=5 K=65 (grad in backward)": (torch.float16, 5, 65, KernelOptions(), (-2.5,)),
    "f16 M=1 K=1000 grad in forward": (torch.float16, 1, 1000, IN_FORWARD, (-2.5,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference_and_twin(emulated, twin, case):
    dtype, rows, dim, options, upstreams = CASES[case]
    student, q, weight = make_inputs(rows, dim, dtype, seed=rows * dim)
    for upstream in upstreams:
        loss, grad = kernel_run(student, q, weight, upstream, options)
        assert_matches_reference(student, q, weight, upstream, loss, grad)
        if dtype in (torch.float32, torch.float64):
            t_loss, t_grad = twin_run(twin, student, q, weight, upstream, lanes=256)
            bound = 1e-12 if dtype == torch.float64 else 2e-5
            assert rel_err(loss, t_loss) <= bound
            assert (grad.double() - t_grad.double()).abs().max() <= bound * grad_unit(
                weight, upstream)


@pytest.mark.parametrize("options", [IN_FORWARD, IN_BACKWARD], ids=["forward", "backward"])
def test_no_rows_is_a_zero_loss_and_an_empty_gradient(emulated, options):
    student, q, weight = make_inputs(0, 65, torch.float32)
    loss, grad = kernel_run(student, q, weight, 3.0, options)
    assert loss.item() == 0.0 and grad.shape == (0, 65)


def test_float16_folds_a_large_upstream_in_before_rounding(emulated):
    """The default float16 path writes u * gradient in one rounding in the backward, so
    entries below float16's range before scaling survive a GradScaler-sized u."""
    student, q, weight = make_inputs(5, 1000, torch.float16, seed=4)
    weight = weight * 1e-3
    upstream = 2.0 ** 16
    loss, grad = kernel_run(student, q, weight, upstream)
    assert_matches_reference(student, q, weight, upstream, loss, grad)
    _, ref = reference_run(student, q, weight, upstream)
    tiny = (ref.abs() / upstream < 2.0 ** -24) & (ref.abs() > 2.0 ** -14)
    assert tiny.any() and (grad[tiny] != 0).all()


def test_ibot_runs_the_kernel_when_asked_and_the_library_has_it(emulated):
    """Under the emulation the library loads and exports the kernel: impl='cuda' resolves
    and ibot_patch_loss runs it, equal to the fused path."""
    assert patch_cuda.unavailable_reason() is None
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[1, 1:, 1] = True
    positions = ibot.MaskedPositions.from_masks(masks)
    student, q, _ = make_inputs(int(masks.sum()), 65, torch.float32, seed=9)
    assert ibot.resolve_impl("cuda", student, set()) == "cuda"
    s = student.clone().requires_grad_()
    loss = ibot.ibot_patch_loss(s, q, positions, STUDENT_TEMP, impl="cuda")
    loss.backward()
    f = student.clone().requires_grad_()
    fused = ibot.ibot_patch_loss(f, q, positions, STUDENT_TEMP, impl="fused")
    fused.backward()
    assert rel_err(loss.detach(), fused.detach()) <= 1e-6
    assert rel_err(s.grad, f.grad) <= 1e-5


def test_one_backward_per_forward_with_the_gradient_in_the_forward(emulated):
    if build.sanitizer() == "address":
        # the error is raised inside autograd's C++ engine (a C++ throw), which the preloaded
        # ASan runtime cannot intercept in an uninstrumented Python: it aborts there
        pytest.skip("an exception thrown through autograd's C++ engine aborts under ASan")
    student, q, weight = make_inputs(2, 7, torch.float32)
    s = student.clone().requires_grad_()
    loss = patch_cuda.cuda_patch_ce(s, q, weight, STUDENT_TEMP, IN_FORWARD)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()
