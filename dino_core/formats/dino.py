"""The official DINO layout (facebookresearch/dino), the registry's first entry.

Backbone keys are the canonical ones (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``), as in the
released backbone-only files (``dino_deitsmall16_pretrain.pth``; timm uses the same names).
Inside files they may carry prefixes: ``module.`` (a DDP-wrapped student), ``backbone.``
(the multi-crop wrapper), in any combination; ``head.*`` keys are the DINO head, whose
weight-norm parameters appear under the old names (``weight_g`` / ``weight_v``) or torch's
parametrisation names (``parametrizations.weight.original0`` / ``original1``).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .files import CheckpointError
from .registry import BackboneFormat, Canonical, register_format

REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
WEIGHT_NORM_RENAMES = {"parametrizations.weight.original0": "weight_g",
                       "parametrizations.weight.original1": "weight_v"}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _rename_weight_norm(key: str) -> str:
    for old, new in WEIGHT_NORM_RENAMES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def detect(state: Mapping[str, object]) -> bool:
    """Whether the required backbone keys are there, under any of the allowed prefixes."""
    bare = {_strip(k, ("module.", "backbone.")) for k in state}
    return all(k in bare for k in REQUIRED)


def to_canonical(state: dict, source: str) -> Canonical:
    """Split a (possibly prefixed) state dict into backbone and head with bare keys."""
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: entry {key!r} is a "
                                  f"{type(value).__name__}, not a tensor")
        bare = _strip(key, ("module.",))
        if bare.startswith("head."):
            head[_rename_weight_norm(bare[len("head."):])] = value
        else:
            backbone[_strip(bare, ("backbone.", "module."))] = value
    return Canonical(backbone, head or None)


def from_canonical(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released backbone-only file's dict: the canonical keys, tensors as stored."""
    return {k: v.contiguous() for k, v in backbone.items()}


DINO = register_format(BackboneFormat(
    "dino", "official DINO / timm keys cls_token, pos_embed, patch_embed.proj.weight, "
    "blocks.N.* (prefixes module. / backbone. allowed)", detect, to_canonical, from_canonical))
