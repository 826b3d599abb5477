"""Optimiser construction and the gradient surgery of the DINO step.

- Parameter groups: weight decay on weights only (no decay on biases and 1-d parameters:
  norms, LayerScale gammas). With the DINOv2 options (``layer_decay``,
  ``patch_embed_lr_mult``) the groups also carry DINOv2's per-parameter lr multipliers.
- AdamW: torch's fused kernel on CUDA, foreach elsewhere; apex's FusedAdam only when asked
  for and installed (never required).
- Clipping (``CLIP_MODES``): DINO's per parameter tensor (``clip_per_tensor``), or
  DINOv2's one global L2 norm per part of the student (``clip_per_part``: the backbone and
  each head, as DINOv2 calls ``clip_grad_norm_`` on each of its student's modules); both
  with foreach kernels and no host sync, each tested against a plain loop
  (``*_reference``).
- Last-layer freeze (``FREEZE_MODES``): the head's last layer gets no update during the
  first epochs. DINO drops its gradients (``drop_grad``: AdamW then skips it, its moments
  untouched); DINOv2 sets its lr to 0 (``zero_lr``: AdamW still updates its moments from
  the gradients, so they are warm when the freeze ends; the weights do not move, weight
  decay included, being decoupled and scaled by the lr). ``zero_lr`` needs the last layer
  in groups of its own (``param_groups(split_last_layer=True)``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..models import VisionTransformer

log = logging.getLogger(__name__)

# Backbone parameters DINOv2 counts as layer 0 (with the patch embedding): the input tokens.
INPUT_TOKENS = ("cls_token", "pos_embed", "mask_token", "register_tokens")
CLIP_MODES = ("per_tensor", "per_part")   # DINO | DINOv2 (module docstring)
FREEZE_MODES = ("drop_grad", "zero_lr")   # DINO | DINOv2 (module docstring)


def is_last_layer(name: str) -> bool:
    """Whether a parameter belongs to a head's last layer (DINO's and DINOv2's rule by name:
    ``last_layer`` in it; the DINO head's and the iBOT head's)."""
    return "last_layer" in name


def decayed(name: str, p: torch.Tensor) -> bool:
    """Whether weight decay applies: not to biases, nor to 1-d tensors (norm weights,
    LayerScale gammas). On every parameter of this project's ViTs and heads this equals
    DINOv2's rule by name (no decay when the name ends in ``.bias`` or contains ``norm`` or
    ``gamma``: tokens and position embeddings ARE decayed in both), except a DINO head built
    with BatchNorm (``use_bn_in_head``, off in both recipes), whose BN weights DINOv2 would
    decay."""
    return not (name.endswith(".bias") or p.ndim <= 1)


def vit_layer(name: str, depth: int) -> int:
    """DINOv2's layer id of a ViT parameter (``name`` relative to the ViT): 0 for the input
    tokens and the patch embedding, i + 1 for block i, depth + 1 for the rest (final norm)."""
    if name in INPUT_TOKENS or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def lr_scales(model: nn.Module, layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0
              ) -> dict[str, float]:
    """DINOv2's lr multiplier of every parameter of ``model``, by name (its
    ``get_params_groups_with_decay``): a parameter of a ``VisionTransformer`` of depth L in
    layer l (``vit_layer``) gets ``layer_decay ** (L + 1 - l)``, times
    ``patch_embed_lr_mult`` for the patch embedding; everything else (heads) 1.0."""
    vits = [(prefix, m) for prefix, m in model.named_modules()
            if isinstance(m, VisionTransformer)]
    scales = {}
    for name, _ in model.named_parameters():
        scale = 1.0
        for prefix, vit in vits:
            if prefix and not name.startswith(prefix + "."):
                continue
            rel = name[len(prefix) + 1:] if prefix else name
            scale = layer_decay ** (vit.depth + 1 - vit_layer(rel, vit.depth))
            if rel.startswith("patch_embed."):
                scale *= patch_embed_lr_mult
            break
        scales[name] = scale
    return scales


def param_groups(model: nn.Module, layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0,
                 split_last_layer: bool = False) -> list[dict]:
    """The optimizer's parameter groups (trainable parameters only).

    Both multipliers 1.0 and no split (DINO): two groups, decayed weights and undecayed ones
    (``decayed``), with no extra keys (the optimizer state of a DINO run is unchanged).
    Otherwise (DINOv2): one group per (lr multiplier, decayed, last layer) triple, in order
    of first appearance, each with ``lr_scale`` (``lr_scales``) and ``wd_scale`` (1.0 or
    0.0), which ``set_hyperparams`` applies to every step's lr and wd, and ``last_layer``
    (``is_last_layer``; always False without ``split_last_layer``), which the ``zero_lr``
    freeze reads.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay == 1.0 and patch_embed_lr_mult == 1.0 and not split_last_layer:
        decay = [p for n, p in named if decayed(n, p)]
        no_decay = [p for n, p in named if not decayed(n, p)]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    scales = lr_scales(model, layer_decay, patch_embed_lr_mult)
    groups: dict[tuple[float, bool, bool], dict] = {}
    for name, p in named:
        key = (scales[name], decayed(name, p), split_last_layer and is_last_layer(name))
        if key not in groups:
            groups[key] = {"params": [], "lr_scale": key[0], "wd_scale": float(key[1]),
                           "last_layer": key[2]}
            if not key[1]:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, kind: str, device: torch.device,
                    layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0,
                    split_last_layer: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``param_groups(model, layer_decay, patch_embed_lr_mult,
    split_last_layer)``; lr and wd are written every step by ``set_hyperparams``."""
    groups = param_groups(model, layer_decay, patch_embed_lr_mult, split_last_layer)
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
    """Write this iteration's lr and wd into every group: a group with ``lr_scale`` /
    ``wd_scale`` (DINOv2's, ``param_groups``) gets lr and wd times them; DINO's two groups
    get lr, and wd in the decayed group (group 0) only. Host floats only: no device sync."""
    for i, g in enumerate(opt.param_groups):
        g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
        if "wd_scale" in g:
            g["weight_decay"] = wd * g["wd_scale"]
        elif i == 0:
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


def clip_parts(model: nn.Module) -> list[list[torch.Tensor]]:
    """The parts ``clip_per_part`` clips together: the trainable parameters of each direct
    child of ``model`` that has some (a ``MultiCropWrapper``: backbone, head; DINOv2's
    student: backbone, DINO head, iBOT head), then ``model``'s own direct parameters."""
    parts = [[p for p in child.parameters() if p.requires_grad]
             for child in model.children()]
    parts.append([p for p in model.parameters(recurse=False) if p.requires_grad])
    return [part for part in parts if part]


@torch.no_grad()
def clip_per_part(parts: list[list[torch.Tensor]], max_norm: float) -> None:
    """Scale the gradients of each part by ``min(1, max_norm / (norm + 1e-6))``, ``norm``
    the L2 norm of all the part's gradients together (``torch.nn.utils.clip_grad_norm_``'s
    rule, per part), with foreach kernels and no host sync."""
    for part in parts:
        grads = [p.grad for p in part if p.grad is not None]
        if not grads:
            continue
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        coef = (max_norm / (total + 1e-6)).clamp_max_(1.0)  # a device scalar: no host sync
        torch._foreach_mul_(grads, coef)


@torch.no_grad()
def clip_per_part_reference(parts: list[list[torch.Tensor]], max_norm: float) -> list[float]:
    """The plain loop: each part's norm summed from its tensors' squares on the host."""
    norms = []
    for part in parts:
        grads = [p.grad for p in part if p.grad is not None]
        if not grads:
            continue
        # host sync per tensor: the reference, not the fast path
        n = sum(g.double().pow(2).sum().item() for g in grads) ** 0.5
        norms.append(n)
        coef = max_norm / (n + 1e-6)
        if coef < 1:
            for g in grads:
                g.mul_(coef)
    return norms


def drop_last_layer_grad(model: nn.Module) -> None:
    """Freeze the head's last layer for this step by dropping its gradients."""
    for name, p in model.named_parameters():
        if is_last_layer(name):
            p.grad = None


def apply_last_layer_freeze(model: nn.Module, opt: torch.optim.Optimizer, mode: str) -> None:
    """Freeze the heads' last layer for this step (after ``set_hyperparams``, before the
    optimizer step): ``drop_grad`` drops its gradients (``drop_last_layer_grad``),
    ``zero_lr`` sets the lr of its groups to 0 (the next ``set_hyperparams`` restores it).
    Host floats only."""
    if mode == "drop_grad":
        drop_last_layer_grad(model)
        return
    if mode != "zero_lr":
        raise ValueError(f"unknown freeze mode {mode!r}; choose from {', '.join(FREEZE_MODES)}")
    marked = [g for g in opt.param_groups if g.get("last_layer")]
    if not marked:
        raise ValueError("freeze mode zero_lr needs the last layer in groups of its own: "
                         "build the optimizer with split_last_layer=True")
    for g in marked:
        g["lr"] = 0.0
