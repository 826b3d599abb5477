"""The official DINOv2 layout (facebookresearch/dinov2), a refinement of DINO's layout.

Backbone keys are those of ``DinoVisionTransformer.state_dict()``, as in the released
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``: DINO's ViT keys plus ``mask_token`` [1, D],
``register_tokens`` [1, R, D] (the registers release), ``blocks.N.ls1.gamma`` and
``blocks.N.ls2.gamma`` [D] (LayerScale) and, for ViT-g/14's SwiGLU FFN,
``blocks.N.mlp.w12.*`` / ``blocks.N.mlp.w3.*`` in place of ``mlp.fc1`` / ``mlp.fc2``. The
canonical layout uses the same names (``dino_core.models.vit``), so reading renames only
what DINOv2's training code writes differently:

- chunked blocks (``block_chunks`` > 0, its FSDP wrapping; the ViT-L/14 and ViT-g/14
  training configs use 4): ``blocks.C.N.*``, N the block's global index, is ``blocks.N.*``;
- full training state dicts (the ``teacher`` of DINOv2's ``teacher_checkpoint.pth``, or of
  this project's dinov2 recipe): ``backbone.*`` the ViT, ``dino_head.*`` (or ``head.*``)
  the DINO head, ``ibot_head.*`` the separate iBOT head, placed as
  ``Canonical.extra["ibot_head"]``; ``module.`` prefixes (DDP) allowed.

Every tensor is placed, or the conversion fails with one error naming the key; what lands
in the backbone is then loaded strictly by every reader (a stray key is an error there).

Writing (``from_canonical``) gives the hub models' layout, which ``DinoVisionTransformer``
built with the same options loads with ``strict=True``: blocks not chunked, and the tensors
every hub model has even where a canonical backbone lacks them: ``mask_token`` (zeros, its
init; read only when masking) and, the hub building with LayerScale (``init_values=1.0``),
``ls1/ls2.gamma`` of ones for a backbone trained without LayerScale (multiplying by 1.0 is
exact: the features are unchanged bit for bit).

Not in any file: how the position embeddings are resized. DINOv2's hub builds its register
models with ``interpolate_offset=0.0, interpolate_antialias=True`` and the others with 0.1
and no antialiasing (``release_interpolation``); a model trained with other settings must
be built with them (this project's checkpoints say so in their config).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .dino import DINO, REQUIRED, _rename_weight_norm, _strip
from .files import CheckpointError
from .registry import BackboneFormat, Canonical, register_format

CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")   # blocks.C.N.rest
HEAD_PARTS = {"dino_head.": "head", "head.": "head", "ibot_head.": "ibot_head"}
BACKBONE_MARKERS = ("mask_token", "register_tokens")    # keys DINO's ViT never has


def _split(key: str) -> tuple[str, str]:
    """(part, key within it) of a key with ``module.`` prefixes removed: part is ``head``,
    ``ibot_head`` or ``backbone``."""
    bare = _strip(key, ("module.",))
    for prefix, part in HEAD_PARTS.items():
        if bare.startswith(prefix):
            return part, bare[len(prefix):]
    return "backbone", _strip(bare, ("backbone.", "module."))


def _marks_dinov2(key: str) -> bool:
    """Whether ``key`` exists only in DINOv2's layout: a ``dino_head.`` / ``ibot_head.``
    part, or a backbone key of LayerScale, registers, the mask token, SwiGLU or chunked
    blocks."""
    bare = _strip(key, ("module.",))
    if bare.startswith(("dino_head.", "ibot_head.")):
        return True
    bare = _strip(bare, ("backbone.", "module."))
    return (bare in BACKBONE_MARKERS or ".ls1.gamma" in bare or ".mlp.w12." in bare
            or CHUNKED.match(bare) is not None)


def detect(state: Mapping[str, object]) -> bool:
    """The required ViT keys (under any allowed prefix) and at least one key only DINOv2's
    layout has (``_marks_dinov2``)."""
    backbone = {k for part, k in map(_split, state) if part == "backbone"}
    return all(k in backbone for k in REQUIRED) and any(map(_marks_dinov2, state))


def _unchunk(keys: list[str], source: str) -> dict[str, str]:
    """Canonical name of every backbone key (``blocks.C.N.x`` -> ``blocks.N.x``), checking
    that each block sits in one chunk, chunks in block order, and that chunked and plain
    block keys are not mixed."""
    renames, chunk_of = {}, {}
    plain_blocks = False
    for key in keys:
        m = CHUNKED.match(key)
        if m is None:
            renames[key] = key
            plain_blocks = plain_blocks or key.startswith("blocks.")
            continue
        chunk, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if chunk_of.setdefault(block, chunk) != chunk:
            raise CheckpointError(f"checkpoint {source}: block {block} appears in chunks "
                                  f"{chunk_of[block]} and {chunk} ({key!r})")
        renames[key] = f"blocks.{block}.{rest}"
    if chunk_of and plain_blocks:
        raise CheckpointError(f"checkpoint {source} mixes chunked (blocks.C.N.*) and plain "
                              "(blocks.N.*) block keys")
    order = [chunk_of[b] for b in sorted(chunk_of)]
    if order != sorted(order):
        raise CheckpointError(f"checkpoint {source}: block chunks are not in block order "
                              f"(chunk of each block: {order})")
    return renames


def to_canonical(state: dict, source: str) -> Canonical:
    """Backbone (unchunked, bare keys), DINO head and iBOT head of a DINOv2 state dict."""
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "head": {}, "ibot_head": {}}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: entry {key!r} is a "
                                  f"{type(value).__name__}, not a tensor")
        part, bare = _split(key)
        name = bare if part == "backbone" else _rename_weight_norm(bare)
        if name in parts[part]:
            raise CheckpointError(f"checkpoint {source}: {key!r} and another key both name "
                                  f"the {part} tensor {name!r}")
        parts[part][name] = value
    renames = _unchunk(list(parts["backbone"]), source)
    backbone: dict[str, torch.Tensor] = {}
    for key, value in parts["backbone"].items():
        if renames[key] in backbone:
            raise CheckpointError(f"checkpoint {source}: {key!r} and another key both name "
                                  f"the backbone tensor {renames[key]!r}")
        backbone[renames[key]] = value
    extra = {"ibot_head": parts["ibot_head"]} if parts["ibot_head"] else {}
    return Canonical(backbone, parts["head"] or None, extra)


def from_canonical(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub models' backbone dict (module docstring): the canonical tensors as stored,
    plus a zero ``mask_token`` and unit LayerScale gammas where the backbone has none."""
    out = {k: v.contiguous() for k, v in backbone.items()}
    cls = out["cls_token"]                                    # [1, 1, D]
    dim = cls.shape[-1]
    out.setdefault("mask_token", torch.zeros(1, dim, dtype=cls.dtype))
    blocks = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")})
    for i in blocks:
        for ls in ("ls1", "ls2"):
            out.setdefault(f"blocks.{i}.{ls}.gamma",
                           torch.ones(dim, dtype=out[f"blocks.{i}.norm1.weight"].dtype))
    return out


def has_dinov2_parts(backbone: Mapping[str, torch.Tensor]) -> bool:
    """Whether a canonical backbone has a part only DINOv2's layout names (LayerScale,
    registers, mask token, SwiGLU): its official layout is then DINOv2's."""
    return any(map(_marks_dinov2, backbone))


def release_interpolation(backbone: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """The position-embedding resize of DINOv2's released models (module docstring), as
    ``VisionTransformer`` keywords: register models offset 0.0 with antialiasing, the
    others offset 0.1 without (DINO's)."""
    if "register_tokens" in backbone:
        return {"interpolate_offset": 0.0, "interpolate_antialias": True}
    return {"interpolate_offset": 0.1, "interpolate_antialias": False}


DINOV2 = register_format(BackboneFormat(
    "dinov2", "official DINOv2 keys: DINO's plus mask_token, register_tokens, "
    "blocks.N.ls1/ls2.gamma, blocks.N.mlp.w12/w3 (SwiGLU); chunked blocks.C.N.*, "
    "backbone./dino_head./ibot_head. parts", detect, to_canonical, from_canonical,
    refines=DINO.name))
