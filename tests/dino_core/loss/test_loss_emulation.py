"""The DINO loss kernels' device code, run on the CPU emulation, through the Python glue.

The kernels of ``csrc/`` (forward, backward, rescale), their plan and launch code and
``dino_core/loss/cuda.py`` run as on a GPU (``pipelines/kernels/emulation``: one OS thread
per CUDA thread, clusters of blocks running together), on CPU tensors. Every case checks
that the plan took the intended path (clusters, resident or streaming, vector or scalar
loads) and holds loss and gradient to the float64 reference with the GPU tests' bounds
(test_loss_cuda.py), and float32/float64 also to the host twin at the plan's chunk. The
inline-PTX cp.async copy is compiled out here (its portable branch runs); what else the
emulation cannot check is listed in tests/pipelines/kernels/test_emulation.py.

Shapes are small (B <= 2; a 512-thread block costs a few tenths of a second here) but each
one picks a code path: K = 3, 37 (odd, scalar loads), 4100 (clusters of 3, a partial last
chunk), 4104 bfloat16 (clusters of 2, V = 12), 1001 float64 (a scalar path in clusters),
65536 bfloat16 (one cluster of 16 blocks: 8,192 threads).
"""
import pytest
import torch

from dino_core.loss import cuda as cuda_ext
from pipelines.kernels import build
from dino_core.loss.cuda import KernelOptions
from tests.dino_core.loss.cases import make_logits, rel_err
from tests.dino_core.loss.host_twin import build_twin, twin_loss
from tests.dino_core.loss.test_loss_cuda import (BOUNDS, TEACHER_TEMP, acc_of,
                                                 assert_overwrite_is_out_of_place, cuda_run,
                                                 grad_err, reference_run)
from tests.pipelines.kernels.emulation import emulated, emulation_library  # noqa: F401

pytestmark = pytest.mark.device_emulation


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return build_twin(tmp_path_factory.mktemp("twin"))


@pytest.fixture(autouse=True)
def fresh_plans():
    """Plans are cached per library and shape: not across tests that change the device."""
    cuda_ext._plan.cache_clear()
    yield
    cuda_ext._plan.cache_clear()


def logits(batch, ncrops, dim, dtype, seed=0):
    student, teacher, center = make_logits(batch, ncrops, dim, seed, dtype=dtype)
    return student, teacher, center.to(acc_of(dtype))


def assert_matches_reference(student, teacher, center, ncrops, upstream, loss, grad):
    dtype, batch = student.dtype, teacher.shape[0] // 2
    ref_loss, ref_grad = reference_run(student, teacher, center, ncrops, upstream)
    assert grad.dtype == dtype and loss.dtype == acc_of(dtype)
    assert rel_err(loss, ref_loss) <= (1e-12 if dtype == torch.float64 else 1e-5)
    unit = abs(upstream) / (0.1 * (2 * ncrops - 2) * batch)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2 * BOUNDS[dtype],
                               atol=unit * (1e-12 if dtype == torch.float64 else 5e-5))


def assert_matches_twin(twin, student, teacher, center, ncrops, upstream, loss, grad, chunk):
    """The host twin over the same column chunks, in the logits' own precision."""
    t_loss, t_grad, _, _ = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops, 0.1,
                                     upstream, chunk)
    bound = 1e-12 if student.dtype == torch.float64 else 2e-5
    assert rel_err(loss, t_loss) <= bound
    assert grad_err(grad, t_grad, ncrops, teacher.shape[0] // 2, upstream) <= bound


# (dtype, ncrops, batch, dim, options, (clusters, chunk, resident)), upstream 1 and -2.5
CASES = {
    "f64 K=3": (torch.float64, 2, 2, 3, KernelOptions(), (1, 3, 1)),
    "f32 K=37 scalar, grad in backward": (torch.float32, 3, 2, 37,
                                          KernelOptions(gradient_in_forward=False), (1, 37, 1)),
    "f32 clusters of 3": (torch.float32, 4, 1, 4100, KernelOptions(), (3, 1368, 1)),
    "f32 clusters of 3, streaming, grad in backward": (
        torch.float32, 4, 1, 4100, KernelOptions(False, allow_resident=False), (3, 1368, 0)),
    "f32 one block above 48 KiB": (torch.float32, 4, 1, 4100, KernelOptions(max_clusters=1),
                                   (1, 4100, 1)),
    "bf16 V=12 clusters of 2": (torch.bfloat16, 12, 1, 4104, KernelOptions(), (2, 2056, 1)),
    "f16 grad in backward": (torch.float16, 2, 2, 1000, KernelOptions(), (1, 1000, 1)),
    "f64 scalar in clusters of 2": (torch.float64, 3, 1, 1001, KernelOptions(), (2, 501, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_reference_and_twin(emulated, twin, case):
    dtype, ncrops, batch, dim, options, expected = CASES[case]
    plan = cuda_ext.plan_for(None, dtype, ncrops, dim, options.max_clusters,
                             options.allow_resident)
    assert (plan.clusters, plan.chunk, plan.resident) == expected
    if case == "f32 one block above 48 KiB":
        assert plan.smem_bytes > 48 * 1024  # launched after the opt-in attribute
    student, teacher, center = logits(batch, ncrops, dim, dtype, seed=dim)
    for upstream in (1.0, -2.5):
        loss, grad, after = cuda_run(student, teacher, center, ncrops, upstream, options=options)
        assert torch.equal(after, student)  # out of place: the logits are untouched
        assert_matches_reference(student, teacher, center, ncrops, upstream, loss, grad)
        if dtype in (torch.float32, torch.float64):
            assert_matches_twin(twin, student, teacher, center, ncrops, upstream, loss, grad,
                                plan.chunk)


def test_a_cluster_of_16_blocks(emulated):
    """The largest cluster, 8,192 threads at once: the emulation's practical ceiling (not
    under TSan, whose runtime keeps track of fewer threads than that)."""
    if build.sanitizer() == "thread":
        pytest.skip("8,192 threads at once exceed ThreadSanitizer's thread limit")
    ncrops, batch, dim = 2, 1, 65536
    plan = cuda_ext.plan_for(None, torch.bfloat16, ncrops, dim)
    assert (plan.clusters, plan.chunk, plan.resident) == (16, 4096, 1)
    student, teacher, center = logits(batch, ncrops, dim, torch.bfloat16, seed=16)
    loss, grad, _ = cuda_run(student, teacher, center, ncrops, -2.5)
    assert_matches_reference(student, teacher, center, ncrops, -2.5, loss, grad)


def test_float16_folds_a_large_upstream_in_before_rounding(emulated):
    """A GradScaler-sized upstream: the backward kernel writes u * gradient in one rounding,
    so entries below float16's range before scaling survive."""
    ncrops, batch, dim = 12, 2, 512
    student, teacher, center = logits(batch, ncrops, dim, torch.float16, seed=5)
    upstream = 2.0 ** 16
    loss, grad, _ = cuda_run(student, teacher, center, ncrops, upstream)
    assert_matches_reference(student, teacher, center, ncrops, upstream, loss, grad)
    _, ref = reference_run(student, teacher, center, ncrops, upstream)
    tiny = (ref.abs() / upstream < 2.0 ** -24) & (ref.abs() > 2.0 ** -14)
    assert tiny.any() and (grad[tiny] != 0).all()


@pytest.mark.parametrize("in_forward", [True, False])
def test_overwrite_is_bit_identical_to_out_of_place(emulated, in_forward):
    ncrops, batch, dim = 3, 2, 100
    student, teacher, center = logits(batch, ncrops, dim, torch.float32, seed=8)
    assert_overwrite_is_out_of_place(student, teacher, center, ncrops,
                                     KernelOptions(gradient_in_forward=in_forward))


def test_misaligned_inputs_take_the_scalar_path(emulated):
    ncrops, batch, dim = 2, 2, 64
    student, teacher, center = logits(batch, ncrops, dim, torch.bfloat16, seed=6)
    buffer = torch.empty(student.numel() + 1, dtype=student.dtype)
    buffer[1:].copy_(student.flatten())
    shifted = buffer[1:].view_as(student).requires_grad_()
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    loss = cuda_ext.cuda_dino_loss(shifted, teacher, center, TEACHER_TEMP, ncrops, 0.1)
    (grad,) = torch.autograd.grad(loss, shifted)
    assert_matches_reference(student, teacher, center, ncrops, 1.0, loss, grad)


def test_without_gradient_only_the_loss_is_computed(emulated):
    ncrops, batch, dim = 2, 2, 48
    student, teacher, center = logits(batch, ncrops, dim, torch.float32, seed=4)
    kept = student.clone()
    with torch.no_grad():
        loss = cuda_ext.cuda_dino_loss(student, teacher, center, TEACHER_TEMP, ncrops, 0.1,
                                       overwrite_logits=True)
    assert torch.equal(student, kept)
    assert rel_err(loss, reference_run(student, teacher, center, ncrops)[0]) <= 1e-5


# ----------------------------------------------------------------------------- cluster fallback
@pytest.mark.parametrize("largest,expected", [(16, (16, 4096, 1)), (8, (8, 8192, 1)),
                                              (4, (4, 16384, 0)), (1, (1, 65536, 0))])
def test_plan_falls_back_to_the_largest_schedulable_cluster(emulated, largest, expected):
    """The recipe's shape (bf16, V = 12, K = 65536) where the device schedules clusters of at
    most `largest` blocks (a MIG slice, a PCIe part): fewer blocks with wider chunks, kept
    resident while they fit the shared memory, not one block per sample."""
    emulated.set_max_cluster(largest)
    plan = cuda_ext.plan_for(None, torch.bfloat16, 12, 65536, max_clusters=16)
    assert (plan.clusters, plan.chunk, plan.resident) == expected


def test_a_fallback_plan_runs_and_matches_the_twin(emulated, twin):
    """Clusters of 3 wanted (K = 6144 float32), at most 2 schedulable: 2 blocks of 3072."""
    emulated.set_max_cluster(2)
    ncrops, batch, dim = 2, 1, 6144
    plan = cuda_ext.plan_for(None, torch.float32, ncrops, dim)
    assert (plan.clusters, plan.chunk, plan.resident) == (2, 3072, 1)
    student, teacher, center = logits(batch, ncrops, dim, torch.float32, seed=3)
    loss, grad, _ = cuda_run(student, teacher, center, ncrops)  # with that plan
    assert_matches_twin(twin, student, teacher, center, ncrops, 1.0, loss, grad, plan.chunk)


# ----------------------------------------------------------------------------- devices
def test_tensors_must_be_where_the_library_runs(emulated):
    """The emulation takes CPU tensors; another device is a ValueError naming the tensor."""
    student, teacher, center = logits(1, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="teacher_output is on meta.*CPU emulation"):
        cuda_ext.cuda_dino_loss(student, teacher.to("meta"), center, TEACHER_TEMP, 2, 0.1)
