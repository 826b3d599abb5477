"""The teacher: an exponential moving average of the student's weights, one foreach call."""
from __future__ import annotations

import torch
from torch import nn


def paired_params(student: nn.Module, teacher: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Student and teacher parameters in matching order (by name), checked once at build time."""
    s = dict(student.named_parameters())
    t = dict(teacher.named_parameters())
    if s.keys() != t.keys():
        missing = sorted(set(s) ^ set(t))[:3]
        raise ValueError(f"student and teacher parameters differ, e.g. {missing}")
    names = list(s)
    return [s[n] for n in names], [t[n] for n in names]


@torch.no_grad()
def ema_update(student_params: list[torch.Tensor], teacher_params: list[torch.Tensor],
               momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for all tensors at once."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1.0 - momentum)


@torch.no_grad()
def ema_update_reference(student_params: list[torch.Tensor], teacher_params: list[torch.Tensor],
                         momentum: float) -> None:
    """The reference recipe's Python loop, one tensor at a time."""
    for ps, pt in zip(student_params, teacher_params):
        pt.data.mul_(momentum).add_((1 - momentum) * ps.detach().data)
