"""Modules from tensors in the canonical layout: the architecture read from the shapes, the
ViT and the DINO head built without a random init and loaded strictly.

The architecture comes from the weights themselves (embedding width, depth, patch size,
position-grid size), matched against the ``ARCHS`` table of ``dino_core.models``; nothing
about a file's layout is known here (that is ``registry.py``'s).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..models import ARCHS, DINOHead, VisionTransformer, build_vit
from .files import CheckpointError


def infer_backbone(state: dict[str, torch.Tensor], source: str) -> tuple[str, int, int]:
    """(arch, patch_size, img_size) of a canonical ViT state dict, from the tensor shapes."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            sample = ", ".join(list(state)[:5]) or "nothing"
            raise CheckpointError(f"checkpoint {source} holds no ViT backbone: key {key!r} is "
                                  f"missing (found {sample} ...)")
    dim = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    patch = state["patch_embed.proj.weight"].shape[-1]
    arch = next((a for a, c in ARCHS.items()
                 if c["embed_dim"] == dim and c["depth"] == depth), None)
    if arch is None:
        raise CheckpointError(f"checkpoint {source} holds a ViT with width {dim} and {depth} "
                              f"blocks, which matches none of {', '.join(ARCHS)}")
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    return arch, patch, grid * patch


def module_order(backbone: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``backbone`` with its keys in the order of ``VisionTransformer.state_dict()`` (keys
    the module lacks last, in their own order). For files without an order of their own: a
    safetensors file sorts its names, and a layout that joins tensors (Hugging Face's q, k,
    v) loses the order; in the module's, a backbone written again gives the same bytes."""
    arch, patch, img_size = infer_backbone(backbone, source)
    with torch.device("meta"):  # the key order only: no memory, no init
        keys = build_vit(arch, patch, img_size=img_size,
                         **options_from_state(backbone)).state_dict().keys()
    rank = {k: i for i, k in enumerate(keys)}
    return {k: backbone[k] for k in sorted(backbone, key=lambda k: rank.get(k, len(rank)))}


def materialise(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], what: str,
                source: str) -> nn.Module:
    """``make()`` built on the meta device (no random init), then given ``state`` strictly.

    Initialising a ViT-L costs seconds and would be overwritten anyway. Tensors are cast to
    the module's dtypes first, so the result equals a plain ``load_state_dict``.
    """
    with torch.device("meta"):
        module = make()
    own = module.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise CheckpointError(f"checkpoint {source}: the {what} does not match a "
                              f"{type(module).__name__} ({detail[:600]})") from None
    return module


def options_from_state(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The ViT options a canonical state dict's tensors show, as ``build_vit`` keywords:
    register tokens (their count), LayerScale (on or off; its init value is irrelevant to
    a model whose weights are then loaded), SwiGLU, a mask token."""
    registers = state.get("register_tokens")
    return {"num_register_tokens": 0 if registers is None else int(registers.shape[1]),
            "layerscale": 1.0 if any(k.endswith(".ls1.gamma") for k in state) else 0.0,
            "ffn_layer": "swiglu" if any(".mlp.w12." in k for k in state) else "mlp",
            "mask_token": "mask_token" in state}


def vit_from_state(backbone: dict[str, torch.Tensor], source: str,
                   interpolation: dict[str, object] | None = None) -> VisionTransformer:
    """The ViT of ``backbone``'s architecture, grid and options (``options_from_state``)
    with exactly its weights (eval mode). ``interpolation``: its position-embedding resize
    (``interpolate_offset`` / ``interpolate_antialias``), which no weight shows (None: DINO's)."""
    arch, patch, img_size = infer_backbone(backbone, source)
    options = {**options_from_state(backbone), **(interpolation or {})}
    model = materialise(lambda: build_vit(arch, patch, img_size=img_size, **options),
                        backbone, "backbone", source)
    return model.eval()


def head_from_state(head: dict[str, torch.Tensor] | None, source: str) -> DINOHead:
    """The DINO head of ``head``, its structure read from the weight shapes (eval mode)."""
    if head is None:
        raise CheckpointError(f"checkpoint {source} holds no DINO head (backbone-only file)")
    h = head
    if "last_layer.weight_v" not in h:
        raise CheckpointError(f"checkpoint {source}: head has no last_layer.weight_v")
    linears = sorted((k for k in h if k.startswith("mlp.") and k.endswith(".weight")
                      and h[k].ndim == 2), key=lambda k: int(k.split(".")[1]))
    if not linears:
        raise CheckpointError(f"checkpoint {source}: head has no mlp linear layers")
    out_dim, bottleneck = h["last_layer.weight_v"].shape
    module = materialise(lambda: DINOHead(
        in_dim=h[linears[0]].shape[1], out_dim=out_dim, nlayers=len(linears),
        use_bn=any(k.endswith("running_mean") for k in h), hidden_dim=h[linears[0]].shape[0],
        bottleneck_dim=bottleneck), h, "DINO head", source)
    return module.eval()
