"""Optimiser construction and the gradient surgery of the DINO step.

- Parameter groups: weight decay on weights only (no decay on biases and 1-d parameters).
- AdamW: torch's fused kernel on CUDA, foreach elsewhere; apex's FusedAdam only when asked
  for and installed (never required).
- Clipping per parameter tensor (not a global norm), done with foreach kernels and no host
  sync; ``clip_per_tensor_reference`` is the plain loop it is tested against.
- Last-layer freeze: the head's last layer gets no update during the first epochs.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: decayed weights and undecayed biases / norms / 1-d tensors / tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, kind: str, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model)
    if kind == "apex":
        try:
            from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
        except ImportError:
            raise RuntimeError("optim.optimizer=apex needs NVIDIA apex, which is not installed; "
                               "use the default optim.optimizer=adamw (torch's fused AdamW)") from None
        return FusedAdam(groups, lr=0.0, adam_w_mode=True)
    if device.type == "cuda":
        return torch.optim.AdamW(groups, lr=0.0, fused=True)
    return torch.optim.AdamW(groups, lr=0.0, foreach=True)


def set_hyperparams(opt: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Write this iteration's lr into every group and wd into the decayed group (group 0)."""
    for i, g in enumerate(opt.param_groups):
        g["lr"] = lr
        if i == 0:
            g["weight_decay"] = wd


@torch.no_grad()
def clip_per_tensor(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient whose L2 norm exceeds ``max_norm`` down to ``max_norm``, with
    foreach kernels and no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    coefs = torch._foreach_norm(grads)
    torch._foreach_add_(coefs, 1e-6)
    torch._foreach_reciprocal_(coefs)
    torch._foreach_mul_(coefs, max_norm)
    torch._foreach_clamp_max_(coefs, 1.0)
    torch._foreach_mul_(grads, coefs)


@torch.no_grad()
def clip_per_tensor_reference(params: list[torch.Tensor], max_norm: float) -> list[float]:
    """The reference recipe's loop: one norm and one host sync per tensor."""
    norms = []
    for p in params:
        if p.grad is None:
            continue
        n = p.grad.norm(2).item()  # host sync per tensor: why the fast path exists
        norms.append(n)
        coef = max_norm / (n + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    return norms


def drop_last_layer_grad(model: nn.Module) -> None:
    """Freeze the head's last layer for this step by dropping its gradients."""
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
