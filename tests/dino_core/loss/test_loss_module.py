"""DINOLoss as the trainer uses it: API, implementation choice, errors, state dict, autocast."""
import io
import logging

import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.train.schedules import teacher_temp_schedule

# tau_t per epoch, as the training schedules give it to the loss
TEMPS = teacher_temp_schedule(warmup_teacher_temp=0.04, teacher_temp=0.07,
                              warmup_teacher_temp_epochs=2, nepochs=5)


def make(dim=16, ncrops=4, **kw):
    return DINOLoss(dim, ncrops, **kw)


def inputs(batch=3, ncrops=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(ncrops * batch, dim, generator=g),
            torch.randn(2 * batch, dim, generator=g))


def test_center_buffer_and_state_dict():
    loss_fn = make()
    assert loss_fn.center.shape == (1, 16) and loss_fn.center.dtype == torch.float32
    assert list(loss_fn.state_dict()) == ["center"]


def test_center_update_follows_the_recipe_after_each_forward():
    loss_fn = make(center_momentum=0.8)
    student, teacher = inputs()
    expected = torch.zeros(1, 16)
    for step in range(3):
        loss_fn(student + step, teacher * (step + 1), TEMPS[step])
        expected = 0.8 * expected + 0.2 * (teacher * (step + 1)).mean(dim=0, keepdim=True)
        torch.testing.assert_close(loss_fn.center, expected, rtol=1e-6, atol=1e-7)


def test_center_used_by_the_forward_is_the_previous_one():
    """The loss of step 2 depends on the center left by step 1 (update after the loss)."""
    student, teacher = inputs()
    a, b = make(), make()
    a(student, teacher, TEMPS[0])
    b.center.copy_(teacher.mean(dim=0, keepdim=True) * 0.1)  # what step 1 leaves
    torch.testing.assert_close(a(student, teacher, TEMPS[1]), b(student, teacher, TEMPS[1]))


def test_state_dict_round_trip_with_weights_only_load():
    loss_fn = make()
    student, teacher = inputs()
    loss_fn(student, teacher, TEMPS[0])
    buf = io.BytesIO()
    torch.save({"dino_loss": loss_fn.state_dict()}, buf)
    buf.seek(0)
    restored = make()
    restored.load_state_dict(torch.load(buf, weights_only=True)["dino_loss"])
    torch.testing.assert_close(restored.center, loss_fn.center, rtol=0, atol=0)
    assert restored.center.abs().sum() > 0


def test_auto_uses_fused_on_cpu_and_says_so_once(caplog):
    loss_fn = make(impl="auto")
    student, teacher = inputs()
    with caplog.at_level(logging.INFO, logger="dino_core.loss"):
        loss_fn(student, teacher, TEMPS[0])
        loss_fn(student, teacher, TEMPS[1])
    lines = [r.getMessage() for r in caplog.records if "DINO loss" in r.getMessage()]
    assert lines == ["DINO loss: using the fused implementation (auto: tensors on cpu)"]
    assert loss_fn.resolve_impl(student) == "fused"


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_an_explicit_implementation_is_logged_once_with_the_reason(caplog, impl):
    loss_fn = make(impl=impl)
    student, teacher = inputs()
    with caplog.at_level(logging.INFO, logger="dino_core.loss"):
        loss_fn(student, teacher, TEMPS[0])
        loss_fn(student, teacher, TEMPS[1])
    lines = [r.getMessage() for r in caplog.records if "DINO loss: using" in r.getMessage()]
    assert lines == [f"DINO loss: using the {impl} implementation (impl='{impl}')"]


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
def test_implementations_agree_in_float32(impl):
    student, teacher = inputs(batch=4, ncrops=6, dim=64, seed=3)
    out = make(dim=64, ncrops=6, impl=impl)(student, teacher, TEMPS[1])
    ref = make(dim=64, ncrops=6, impl="reference")(student, teacher, TEMPS[1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)


def test_cuda_impl_on_cpu_tensors_is_a_clear_error():
    student, teacher = inputs()
    with pytest.raises(ValueError, match="impl='cuda' needs CUDA tensors"):
        make(impl="cuda")(student, teacher, TEMPS[0])


@pytest.mark.parametrize("kw,match", [(dict(impl="triton"), "impl must be one of"),
                                      (dict(ncrops=1), "ncrops must be >= 2"),
                                      (dict(student_temp=0.0), "student_temp"),
                                      (dict(center_momentum=1.5), "center_momentum")])
def test_bad_construction_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


@pytest.mark.parametrize("student_shape,teacher_shape,match", [
    ((12, 16), (5, 16), "2\\*B rows"),
    ((10, 16), (6, 16), "ncrops\\*B"),
    ((12, 15), (6, 16), "out_dim=16"),
    ((12,), (6, 16), "2-d logits"),
])
def test_bad_input_shapes(student_shape, teacher_shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.randn(student_shape), torch.randn(teacher_shape), TEMPS[0])


def test_teacher_temperature_must_be_positive():
    student, teacher = inputs()
    with pytest.raises(ValueError, match="teacher_temp must be > 0"):
        make()(student, teacher, 0.0)


def test_center_is_not_updated_by_a_failed_call():
    loss_fn = make()
    with pytest.raises(ValueError):
        loss_fn(torch.randn(10, 16), torch.randn(6, 16), TEMPS[0])
    assert loss_fn.center.abs().sum() == 0


def test_autocast_does_not_lower_the_loss_precision():
    student, teacher = inputs(batch=4, ncrops=6, dim=64, seed=4)
    plain = make(dim=64, ncrops=6, impl="fused")(student, teacher, TEMPS[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = make(dim=64, ncrops=6, impl="fused")(student, teacher, TEMPS[0])
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=1e-6, atol=0)


def test_teacher_gets_no_gradient():
    student, teacher = inputs()
    s, t = student.requires_grad_(), teacher.requires_grad_()
    make(impl="fused")(s, t, TEMPS[0]).backward()
    assert s.grad is not None and t.grad is None
