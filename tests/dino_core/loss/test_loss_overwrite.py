"""``overwrite_logits``: the gradient written over the student logits, against the
out-of-place gradient (its twin), the autograd safety net, and the trainer's use of it."""
import logging
from pathlib import Path

import pytest
import torch

from dino_core.config import TrainConfig, load_config
from dino_core.loss import DINOLoss, fused_dino_loss, teacher_probs
from dino_core.recipes.dino import DINORecipe
from pipelines.config_io import ConfigError
from tests.dino_core.loss.cases import TEMPS, loss_and_grad, make_logits, rel_err

# (B, ncrops, K): two globals only, one local, the recipe's 12 views.
SHAPES = [(3, 2, 17), (2, 3, 64), (4, 12, 100)]


def fused_pair(student, q, ncrops, upstream, inplace):
    """Loss and gradient of ``upstream * loss`` from non-leaf logits (as a head makes
    them); also the logits tensor after the backward."""
    logits = student.clone().requires_grad_().mul(1.0)  # a non-leaf, like F.linear's output
    loss = fused_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=inplace)
    (grad,) = torch.autograd.grad(loss * upstream, logits)
    return loss.detach(), grad, logits.detach()


# The overwriting forward takes the loss as sum(n * lse) - sum(<Q, x>) from its one softmax,
# the out-of-place one as -sum(<Q, log_softmax(x)>): equal up to rounding of terms of size
# ~ n * max(x), hence the loss bounds; the gradient is the same ops on the same softmax.
LOSS_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,ncrops,dim", SHAPES)
@pytest.mark.parametrize("upstream", [1.0, -2.5])
def test_overwrite_equals_out_of_place(dtype, batch, ncrops, dim, upstream):
    student, teacher, center = make_logits(batch, ncrops, dim, seed=dim + ncrops, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q = teacher_probs(teacher, center.to(acc), 0.05)
    loss_out, grad_out, logits_out = fused_pair(student, q, ncrops, upstream, inplace=False)
    loss_in, grad_in, logits_in = fused_pair(student, q, ncrops, upstream, inplace=True)
    torch.testing.assert_close(loss_in, loss_out, rtol=LOSS_RTOL[dtype], atol=0)
    assert grad_in.dtype == grad_out.dtype == dtype
    assert torch.equal(grad_in, grad_out)             # bit for bit
    assert torch.equal(logits_out, student)           # out of place: the logits survive
    assert torch.equal(logits_in, grad_out)           # overwritten: they hold the gradient
    assert grad_in.data_ptr() == logits_in.data_ptr()  # and no gradient tensor was made


@pytest.mark.parametrize("scale", [0.5, 5.0, 30.0])
@pytest.mark.parametrize("agree", [False, True])
def test_overwrite_loss_equals_reference_in_float64(scale, agree):
    """Against the pair loop, also where student and teacher agree (the trained regime,
    where the loss is small next to max(x) and the two sums nearly cancel)."""
    batch, ncrops, dim = 3, 6, 200
    student, teacher, center = make_logits(batch, ncrops, dim, seed=int(scale) + agree,
                                           scale=scale)
    if agree:
        student = teacher[:batch].repeat(ncrops, 1) * 0.5 + 0.01 * student
    ref = loss_and_grad("reference", student, teacher, center, ncrops, 1)
    over = loss_and_grad("fused", student, teacher, center, ncrops, 1, overwrite_logits=True)
    assert rel_err(over[0], ref[0]) <= 1e-10
    assert rel_err(over[1], ref[1]) <= 1e-10
    torch.testing.assert_close(over[2], ref[2], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", [0.3, 3.0])
@pytest.mark.parametrize("agree", [False, True])
def test_overwrite_float32_loss_error_is_bounded_by_the_largest_logit(scale, agree):
    """float32: |loss - exact| <= 4 eps max|x| (the bound fused.py states), also where the
    student matches the teacher (a loss near its floor, the two sums nearly cancelling).
    ``exact``: float64 arithmetic on the same float32 inputs."""
    batch, ncrops, dim = 4, 12, 4096
    student, teacher, center = make_logits(batch, ncrops, dim, seed=3, scale=scale)
    if agree:
        base = teacher[:batch]
        teacher = torch.cat([base, base + 0.01 * teacher[batch:]])
        student = (2.5 * (base - center)).repeat(ncrops, 1) + 0.01 * student
    student = student.float()
    q = teacher_probs(teacher.float(), center.float(), 0.04)
    exact = fused_pair(student.double(), q.double(), ncrops, 1.0, inplace=False)[0].item()
    loss = fused_pair(student, q, ncrops, 1.0, inplace=True)[0].item()
    max_x = student.abs().max().item() / 0.1
    assert abs(loss - exact) <= 4 * torch.finfo(torch.float32).eps * max_x


@pytest.mark.parametrize("impl", ["fused", "auto"])
def test_dino_loss_module_passes_the_flag(impl):
    ncrops, batch, dim = 4, 3, 32
    student, teacher, center = make_logits(batch, ncrops, dim, seed=3, dtype=torch.float32)
    results = []
    for inplace in (False, True):
        loss_fn = DINOLoss(dim, ncrops, impl=impl, overwrite_logits=inplace)
        loss_fn.center.copy_(center)
        base = student.clone().requires_grad_()
        logits = base * 1.0
        loss = loss_fn(logits, teacher, TEMPS[2])
        loss.backward()
        results.append((loss.detach(), base.grad, logits.detach(), loss_fn.center.clone()))
    (loss_a, grad_a, logits_a, center_a), (loss_b, grad_b, logits_b, center_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    assert torch.equal(center_a, center_b)
    assert torch.equal(logits_a, student) and torch.equal(logits_b, grad_b)


def test_another_node_that_saved_the_logits_fails_loudly():
    """sin saves its input; its backward runs after the loss's (it was recorded first), so
    it would read the gradient: the version counter turns that into torch's error."""
    ncrops, batch, dim = 4, 2, 16
    student, teacher, center = make_logits(batch, ncrops, dim, seed=5)
    q = teacher_probs(teacher, center, 0.05)
    for inplace in (False, True):
        base = student.clone().requires_grad_()
        logits = base * 1.0
        other = torch.sin(logits).sum()
        total = fused_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=inplace) + other
        if not inplace:
            total.backward()  # the twin: fine out of place
            continue
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            total.backward()


def test_second_backward_and_double_backward_are_refused():
    ncrops, batch, dim = 3, 2, 8
    student, teacher, center = make_logits(batch, ncrops, dim, seed=6)
    q = teacher_probs(teacher, center, 0.05)
    logits = student.clone().requires_grad_().mul(1.0)
    loss = fused_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    logits = student.clone().requires_grad_().mul(1.0)
    loss = fused_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_non_contiguous_logits_are_copied_and_left_alone():
    ncrops, batch, dim = 3, 2, 8
    student, teacher, center = make_logits(batch, ncrops, dim, seed=7)
    q = teacher_probs(teacher, center, 0.05)
    wide = torch.cat([student, student], dim=1).requires_grad_().mul(1.0)
    logits = wide[:, :dim]                               # a non-contiguous view
    before = logits.detach().clone()
    loss = fused_dino_loss(logits, q, ncrops, 0.1, overwrite_logits=True)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.equal(logits.detach(), before)
    assert torch.equal(grad, fused_pair(student, q, ncrops, 1.0, inplace=False)[1])


def test_reference_impl_ignores_the_flag_and_says_so(caplog):
    ncrops, batch, dim = 4, 2, 16
    student, teacher, _ = make_logits(batch, ncrops, dim, seed=8, dtype=torch.float32)
    loss_fn = DINOLoss(dim, ncrops, impl="reference", overwrite_logits=True)
    logits = student.clone().requires_grad_().mul(1.0)
    with caplog.at_level(logging.INFO, logger="dino_core.loss"):
        loss_fn(logits, teacher, TEMPS[0]).backward()
        loss_fn(logits, teacher, TEMPS[0])
    notes = [r.getMessage() for r in caplog.records if "overwrite_logits" in r.getMessage()]
    assert len(notes) == 1 and "no effect on impl='reference'" in notes[0]
    assert torch.equal(logits.detach(), student)


def test_bad_flag_value_is_refused():
    with pytest.raises(ValueError, match="overwrite_logits must be a bool"):
        DINOLoss(8, 2, overwrite_logits="yes")


# ----------------------------------------------------------------------------- config
def test_config_default_round_trip_and_trainer_wiring(tmp_path):
    assert TrainConfig().loss.overwrite_logits is True
    cfg = load_config(None, ["loss.overwrite_logits=false", "model.out_dim=64"])
    assert cfg.loss.overwrite_logits is False
    cfg.save_yaml(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert DINORecipe.from_config(cfg).loss.overwrite_logits is False
    assert DINORecipe.from_config(load_config(None, ["model.out_dim=64"])).loss.overwrite_logits \
        is True
    with pytest.raises(ConfigError, match=r"loss\.overwrite_logits"):
        load_config(None, ["loss.overwrite_logits=maybe"])


# ----------------------------------------------------------------------------- training
def tiny_training(inplace: bool, steps: int = 3) -> tuple[dict, list[torch.Tensor], list[int]]:
    """``steps`` training steps of a ViT-tiny with synthetic views; returns the student and
    teacher parameters, the losses, and the version of each step's student logits after it
    (bumped when the backward wrote the gradient over them)."""
    from dino_core.train.optim import build_optimizer
    from dino_core.train.step import TrainStep
    from tests.dino_core.train.train_helpers import step_inputs, tiny_overrides

    unused = Path("/nonexistent")
    cfg = load_config(None, tiny_overrides(unused, unused) +
                      [f"loss.overwrite_logits={str(inplace).lower()}"])
    torch.manual_seed(0)
    recipe = DINORecipe.from_config(cfg)
    student, teacher = recipe.build_models()
    loss_fn = recipe.loss
    assert loss_fn.overwrite_logits is inplace
    step = TrainStep(recipe, student, teacher, build_optimizer(student, "adamw",
                                                               torch.device("cpu")),
                     torch.device("cpu"), "fp32", clip_grad=3.0, freeze_last_layer=1)
    outputs = []
    student.register_forward_hook(lambda module, args, out: outputs.append(out))
    g = torch.Generator().manual_seed(1)
    batch, losses, versions = cfg.data.batch_size, [], []
    for i in range(steps):
        views = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
        views += [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
        losses.append(step(*step_inputs(views, epoch=1, iteration=i, lr=1e-3, wd=0.04,
                                        momentum=0.99)))
        versions.append(outputs[-1]._version)
    params = {f"student.{k}": v for k, v in student.state_dict().items()}
    params.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    params["center"] = loss_fn.center
    return params, losses, versions


def test_training_steps_bit_identical_with_and_without_overwrite_logits():
    """The gradients are bit-identical, so the parameters are; the logged losses
    agree to rounding (see LOSS_RTOL)."""
    params_out, losses_out, versions_out = tiny_training(inplace=False)
    params_in, losses_in, versions_in = tiny_training(inplace=True)
    assert versions_out == [0, 0, 0]                  # out of place: logits untouched
    assert all(v > 0 for v in versions_in)            # in place: the backward wrote them
    torch.testing.assert_close(losses_in, losses_out, rtol=1e-5, atol=0)
    assert params_in.keys() == params_out.keys()
    for key, value in params_out.items():
        assert torch.equal(params_in[key], value), f"{key} differs with overwrite_logits"
    initial, _, _ = tiny_training(inplace=False, steps=0)
    moved = sum(not torch.equal(initial[k], v) for k, v in params_out.items())
    assert moved > len(params_out) // 2               # the steps did train
