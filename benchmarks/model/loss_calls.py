"""What ``dino-bench loss`` calls: each implementation's forward + backward on the same
inputs, as one ``Call`` (with the untimed setup an overwriting implementation needs).
``benchmarks/model/loss.py`` times and measures these calls."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dino_core.loss import einsum_dino_loss, fused_dino_loss, reference_dino_loss, teacher_probs
from dino_core.loss import cuda as cuda_ext

from .loss_model import OVERWRITE

IMPLS = ("reference", "einsum", "fused", f"fused {OVERWRITE}", "cuda", f"cuda {OVERWRITE}")
TEACHER_TEMP, STUDENT_TEMP = 0.04, 0.1


def make_inputs(device: torch.device, batch: int, views: int, out_dim: int, dtype: torch.dtype,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits ``[views*B, K]`` (a leaf requiring grad), teacher logits ``[2*B, K]``,
    center ``[1, K]`` (float32), all on ``device``."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(views * batch, out_dim, generator=g).to(device, dtype)
    teacher = torch.randn(2 * batch, out_dim, generator=g).to(device, dtype)
    center = 0.1 * torch.randn(1, out_dim, generator=g).to(device)
    return student.requires_grad_(), teacher, center


def loss_fn(impl: str, views: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                torch.Tensor]:
    """``(student, teacher, center) -> loss`` for one implementation."""
    overwrite = impl.endswith(OVERWRITE)
    base = impl.removesuffix(OVERWRITE).strip()
    if impl == "reference":
        return lambda s, t, c: reference_dino_loss(s, t, c, TEACHER_TEMP, views, STUDENT_TEMP)
    if impl == "einsum":
        return lambda s, t, c: einsum_dino_loss(s, t, c, TEACHER_TEMP, views, STUDENT_TEMP)
    if base == "fused" and impl in IMPLS:
        return lambda s, t, c: fused_dino_loss(s, teacher_probs(t, c, TEACHER_TEMP), views,
                                               STUDENT_TEMP, overwrite_logits=overwrite)
    if base == "cuda" and impl in IMPLS:
        return lambda s, t, c: cuda_ext.cuda_dino_loss(s, t, c, TEACHER_TEMP, views,
                                                       STUDENT_TEMP, overwrite_logits=overwrite)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")


@dataclass
class Call:
    """One measured call, ``run``, and what must precede it untimed, ``setup``: calling the
    object runs both."""

    run: Callable[[], torch.Tensor]
    setup: Callable[[], object] | None = None

    def __call__(self) -> torch.Tensor:
        if self.setup is not None:
            self.setup()
        return self.run()


def step_fn(impl: str, student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
            views: int) -> Call:
    """One timed call: loss forward and backward; the gradient replaces ``student.grad``.

    Implementations that overwrite the logits get their own logits buffer, allocated here
    (before any measured call, like ``student``); the call's untimed ``setup`` refills it
    from ``student`` (the previous call left its gradient there; in training the head
    writes fresh logits), and the gradient, which ``student.grad`` then refers to (no
    copy), is that buffer.
    """
    fn = loss_fn(impl, views)
    if impl.endswith(OVERWRITE):
        logits = student.detach().clone().requires_grad_()

        def restore() -> None:
            student.grad = None
            with torch.no_grad():
                logits.copy_(student)

        def overwrite_step() -> torch.Tensor:
            loss = fn(logits, teacher, center)
            (grad,) = torch.autograd.grad(loss, logits)  # the logits buffer itself
            student.grad = grad
            return loss.detach()

        return Call(overwrite_step, restore)

    def step() -> torch.Tensor:
        student.grad = None
        loss = fn(student, teacher, center)
        loss.backward()
        return loss.detach()

    return Call(step)


def unavailable(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run on ``device`` here, or None."""
    if not impl.startswith("cuda"):
        return None
    if device.type != "cuda":
        return "needs a CUDA device"
    return cuda_ext.unavailable_reason()
