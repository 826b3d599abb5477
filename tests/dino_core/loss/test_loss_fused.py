"""The fused loss (closed-form backward) against the reference pair loop."""
import pytest
import torch

from dino_core.loss import DINOLoss, fused_dino_loss, reference_dino_loss, teacher_probs
from dino_core.loss.fused import FusedDINOLossFunction
from tests.dino_core.loss.cases import TEMPS, loss_and_grad, make_logits, rel_err


def assert_rel(actual, expected, rel):
    err = rel_err(actual, expected)
    assert err <= rel, f"relative error {err:.3e} > {rel:.0e}"


# (B, ncrops, K): every ncrops in 2..12, batches 1..7, widths from 3 to 1000.
SHAPES = [(1 + n % 4, n, k) for n, k in zip(range(2, 13),
                                            (3, 64, 17, 100, 33, 9, 257, 1000, 128, 5, 31))]
SHAPES += [(7, 3, 128), (2, 2, 64)]


@pytest.mark.parametrize("batch,ncrops,dim", SHAPES)
@pytest.mark.parametrize("epoch", [0, 2, 5])
def test_fused_equals_reference_in_float64(batch, ncrops, dim, epoch):
    student, teacher, center = make_logits(batch, ncrops, dim, seed=1000 * batch + dim + ncrops)
    ref = loss_and_grad("reference", student, teacher, center, ncrops, epoch)
    fus = loss_and_grad("fused", student, teacher, center, ncrops, epoch)
    assert_rel(fus[0], ref[0], 1e-10)
    assert_rel(fus[1], ref[1], 1e-10)
    torch.testing.assert_close(fus[2], ref[2], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("student_temp", [0.05, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("scale", [0.5, 5.0, 30.0])
def test_fused_equals_reference_over_temperatures_and_logit_scales(student_temp, scale):
    batch, ncrops, dim = 3, 5, 50
    student, teacher, center = make_logits(batch, ncrops, dim, seed=7, scale=scale)
    ref = loss_and_grad("reference", student, teacher, center, ncrops, 1, student_temp)
    fus = loss_and_grad("fused", student, teacher, center, ncrops, 1, student_temp)
    assert_rel(fus[0], ref[0], 1e-10)
    assert_rel(fus[1], ref[1], 1e-10)


def test_upstream_gradient_scales_the_gradient():
    student, teacher, center = make_logits(2, 4, 20, seed=5)
    ref = loss_and_grad("reference", student, teacher, center, 4, 3, upstream=-2.5)
    fus = loss_and_grad("fused", student, teacher, center, 4, 3, upstream=-2.5)
    assert_rel(fus[1], ref[1], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_rows_sum_to_zero(dtype):
    ncrops, batch = 6, 4
    student, teacher, center = make_logits(batch, ncrops, 300, seed=9, dtype=dtype)
    _, grad, _ = loss_and_grad("fused", student, teacher, center.to(dtype), ncrops, 0)
    row_sums = grad.double().sum(dim=1).abs()
    row_scale = grad.double().abs().sum(dim=1)
    eps = torch.finfo(dtype).eps
    assert (row_sums <= 50 * eps * row_scale).all(), row_sums.max()


def test_closed_form_backward_passes_gradcheck():
    """Finite differences, independently of the reference."""
    ncrops, batch, dim = 3, 2, 5
    student, teacher, center = make_logits(batch, ncrops, dim, seed=21)
    q = teacher_probs(teacher, center, 0.05)
    student.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: FusedDINOLossFunction.apply(s, q, ncrops, 0.1), (student,), eps=1e-6,
        atol=1e-8)


@pytest.mark.parametrize("dtype,rtol", [(torch.bfloat16, 2.0 ** -8), (torch.float16, 2.0 ** -10)])
def test_low_precision_inputs_within_bounds(dtype, rtol):
    """bf16/fp16 logits, float32 accumulation. Bounds: the loss within 1e-5 relative of the
    float64 reference on the same (rounded) values; each gradient element within the
    rounding of its dtype (rtol = 2^-8 bf16, 2^-10 fp16) plus 1e-7 absolute (fp16
    subnormals) of the float64 gradient."""
    ncrops, batch, dim = 10, 4, 512
    student, teacher, center = make_logits(batch, ncrops, dim, seed=13, dtype=dtype, scale=1.0)
    loss_fn = DINOLoss(dim, ncrops, impl="fused")
    loss_fn.center.copy_(center)
    s = student.clone().requires_grad_()
    loss = loss_fn(s, teacher, TEMPS[2])
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == dtype
    ref = loss_and_grad("reference", student.double(), teacher.double(), center, ncrops, 2)
    assert_rel(loss, ref[0], 1e-5)
    torch.testing.assert_close(s.grad.double(), ref[1], rtol=rtol, atol=1e-7)


def test_fused_keeps_no_tensor_per_pair():
    """What autograd saves: the fused graph keeps the student logits and the teacher
    probabilities; the pair loop keeps several [B, K] tensors per pair."""
    ncrops, batch, dim = 12, 4, 256

    def saved_bytes(loss_fn):
        student, teacher, center = make_logits(batch, ncrops, dim, seed=1, dtype=torch.float32)
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        s = student.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(s, teacher, center.float())
        return sum(total)

    fused = saved_bytes(lambda s, t, c: fused_dino_loss(s, teacher_probs(t, c, 0.04), ncrops,
                                                       0.1))
    reference = saved_bytes(lambda s, t, c: reference_dino_loss(s, t, c, 0.04, ncrops, 0.1))
    block = batch * dim * 4
    assert fused == (ncrops + 2) * block  # student [V*B, K] + q [2, B, K]
    assert reference >= 2 * (2 * ncrops - 2) * block
