"""timm's ViT layout (``vit_small_patch16_224.dino`` and the other DINO models of timm).

timm's ``VisionTransformer`` names its tensors as the official DINO code does
(``cls_token``, ``pos_embed`` [1, 1 + s*s, D] with the class position, ``patch_embed.proj``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), so a timm file
IS an official backbone file: the entry below writes the same dict (``dino-export --format
timm``, a ``.pth`` or, as timm's hub files, a ``.safetensors``), and reading needs nothing
of its own: the ``dino`` entry, registered first, detects and converts timm's files (a
classifier's ``head.weight`` / ``head.bias`` is set aside as a head, never as a backbone
tensor). timm's ``load_pretrained`` / ``create_model(..., pretrained_cfg_overlay=dict(
file=PATH))`` reads what is written here; no timm import is needed for that.
"""
from __future__ import annotations

import dataclasses

from .dino import DINO
from .registry import register_format

TIMM = register_format(dataclasses.replace(
    DINO, name="timm", summary="timm VisionTransformer keys, the same as dino's (read as dino)"))
