"""Shared inputs and runners for the loss tests (``from tests.dino_core.loss.cases import ...``)."""
import torch

from dino_core.loss import DINOLoss
from dino_core.train.schedules import teacher_temp_schedule

SCHEDULE = dict(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4,
                nepochs=6)
TEMPS = teacher_temp_schedule(**SCHEDULE)  # tau_t per epoch, as the training schedules give it


def make_logits(batch, ncrops, dim, seed, dtype=torch.float64, scale=2.0, device="cpu"):
    """Student ``[ncrops*B, K]`` and teacher ``[2*B, K]`` logits (``scale`` * N(0, 1)) in
    ``dtype``, and a float64 center ``[1, K]``, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(ncrops * batch, dim, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(2 * batch, dim, generator=g, dtype=torch.float64)
    center = 0.3 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    return student.to(device, dtype), teacher.to(device, dtype), center.to(device)


def loss_and_grad(impl, student, teacher, center, ncrops, epoch, student_temp=0.1,
                  upstream=1.0, overwrite_logits=False):
    """Run ``DINOLoss(impl=impl)`` once from ``center``: (loss, d(upstream * loss)/d student,
    center after the update). The logits it is given are a non-leaf copy of ``student``
    (``student`` itself survives ``overwrite_logits=True``)."""
    loss_fn = DINOLoss(student.shape[1], ncrops, student_temp=student_temp, impl=impl,
                       overwrite_logits=overwrite_logits).to(student.device)
    if student.dtype == torch.float64:
        loss_fn = loss_fn.double()
    loss_fn.center.copy_(center)
    s = student.clone().requires_grad_()
    loss = loss_fn(s * 1.0, teacher, TEMPS[epoch])
    (loss * upstream).backward()
    return loss.detach(), s.grad, loss_fn.center.clone()


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (relative to the whole tensor's scale)."""
    diff = (actual.double() - expected.double()).abs().max()
    return (diff / expected.double().abs().max()).item()
