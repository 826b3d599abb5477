"""The Hugging Face ``transformers`` DINOv2 layout (``Dinov2Model``, as in
``facebook/dinov2-small``; ``Dinov2WithRegistersModel`` for backbones with register tokens):
its tensor names, and its model directory.

Names, hub form (what ``save_pretrained`` writes), with the canonical name each becomes
(D = hidden size, i = block):

    embeddings.cls_token [1, 1, D]                      cls_token
    embeddings.mask_token [1, D]                        mask_token
    embeddings.register_tokens [1, R, D]                register_tokens (registers model)
    embeddings.position_embeddings [1, 1 + s*s, D]      pos_embed
    embeddings.patch_embeddings.projection.{w,b}        patch_embed.proj.{w,b}
    encoder.layer.i.norm1 / norm2.{w,b}                 blocks.i.norm1 / norm2.{w,b}
    encoder.layer.i.attention.attention.query.{w,b}     blocks.i.attn.qkv.{w,b} rows 0:D
    encoder.layer.i.attention.attention.key.{w,b}       ... rows D:2D
    encoder.layer.i.attention.attention.value.{w,b}     ... rows 2D:3D
    encoder.layer.i.attention.output.dense.{w,b}        blocks.i.attn.proj.{w,b}
    encoder.layer.i.layer_scale1 / 2.lambda1 [D]        blocks.i.ls1 / ls2.gamma
    encoder.layer.i.mlp.fc1 / fc2.{w,b}                 blocks.i.mlp.fc1 / fc2.{w,b}
    encoder.layer.i.mlp.weights_in / weights_out.{w,b}  blocks.i.mlp.w12 / w3.{w,b} (SwiGLU)
    layernorm.{w,b}                                     norm.{w,b}

Every Hugging Face DINOv2 model has a mask token and LayerScale; a canonical backbone
without them is written with the values that change nothing (as ``dinov2.py`` writes the
official layout): ``mask_token`` zeros (its init; read only when masking) and ``lambda1``
ones (multiplying by 1.0 is exact). Read back, such a file holds those tensors, and the ViT
built from it has them too: the same features.

q, k and v are rows of the joined qkv, split and joined bit-exactly (as ``hf.py``). Not
written: the position-embedding resize, which no weight shows: transformers resizes by its
own rule, so features agree at the stored grid size only (measured in the README).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from ..models import ARCHS
from .canonical import infer_backbone
from .files import CheckpointError
from .hf import LAYER_NORM_EPS, QKV, joined, write_model_directory
from .registry import BackboneFormat, Canonical, register_format

EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
BLOCK_PARTS = {  # hub name inside encoder.layer.i -> canonical name inside blocks.i
    "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3",
}
LAYER_SCALE = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
_HUB = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_CANONICAL = re.compile(r"^blocks\.(\d+)\.(.+)$")


def detect(state: Mapping[str, object]) -> bool:
    """Hub names of a Hugging Face DINOv2 model (LayerScale's ``lambda1`` marks it)."""
    names = {k.removeprefix("dinov2.") for k in state}
    return "embeddings.cls_token" in names and any(
        k.endswith(".layer_scale1.lambda1") for k in names)


def _split_suffix(rest: str) -> tuple[str, str]:
    """``attention.output.dense.weight`` -> (``attention.output.dense``, ``weight``)."""
    part, _, param = rest.rpartition(".")
    return part, param


def to_canonical(state: dict, source: str) -> Canonical:
    """Every tensor of a Hugging Face DINOv2 state dict under its canonical name; q, k, v
    joined into qkv. An unplaced tensor is an error naming it."""
    backbone: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unplaced = []
    for key, value in state.items():
        name = key.removeprefix("dinov2.")
        if name.startswith(("pooler.", "classifier.")):
            continue
        m = _HUB.match(name)
        rest = m.group(2) if m else ""
        part, param = _split_suffix(rest)
        if name in EMBEDDINGS:
            backbone[EMBEDDINGS[name]] = value
        elif rest in LAYER_SCALE:
            backbone[f"blocks.{m.group(1)}.{LAYER_SCALE[rest]}"] = value
        elif part in BLOCK_PARTS:
            backbone[f"blocks.{m.group(1)}.{BLOCK_PARTS[part]}.{param}"] = value
        elif part.startswith("attention.attention.") and part.split(".")[-1] in QKV:
            qkv.setdefault((int(m.group(1)), param), {})[part.split(".")[-1]] = value
        else:
            unplaced.append(key)
    return joined(backbone, qkv, unplaced, source, "DINOv2")


def from_canonical(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub's names for a canonical backbone, with a zero mask token and LayerScale ones
    where the backbone has none (module docstring)."""
    embeddings = {v: k for k, v in EMBEDDINGS.items()}
    parts = {v: k for k, v in BLOCK_PARTS.items()}
    scales = {v: k for k, v in LAYER_SCALE.items()}
    dim = backbone["cls_token"].shape[-1]
    like = backbone["cls_token"]
    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        m = _CANONICAL.match(key)
        rest = m.group(2) if m else ""
        part, param = _split_suffix(rest)
        if key in embeddings:
            out[embeddings[key]] = value
        elif rest in scales:
            out[f"encoder.layer.{m.group(1)}.{scales[rest]}"] = value
        elif part == "attn.qkv":
            for name, rows in zip(QKV, value.chunk(3, dim=0)):
                out[f"encoder.layer.{m.group(1)}.attention.attention.{name}.{param}"] = rows
        elif part in parts:
            out[f"encoder.layer.{m.group(1)}.{parts[part]}.{param}"] = value
        else:
            raise CheckpointError(f"backbone tensor {key!r} has no place in the Hugging Face "
                                  "DINOv2 layout (Dinov2Model)")
    out.setdefault("embeddings.mask_token", torch.zeros(1, dim, dtype=like.dtype))
    depth = len({k.split(".")[1] for k in backbone if k.startswith("blocks.")})
    for i in range(depth):
        for name in LAYER_SCALE:
            out.setdefault(f"encoder.layer.{i}.{name}", torch.ones(dim, dtype=like.dtype))
    return out


def dinov2_config(backbone: dict[str, torch.Tensor]) -> dict:
    """``config.json`` of the ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) computing
    what this ViT computes on ``backbone`` at its stored grid size."""
    arch, patch, img_size = infer_backbone(backbone, "the backbone")
    dim = backbone["cls_token"].shape[-1]
    swiglu = "blocks.0.mlp.w12.weight" in backbone
    hidden = (backbone["blocks.0.mlp.fc1.weight"].shape[0] if not swiglu
              else ARCHS[arch].get("mlp_ratio", 4) * dim)
    registers = backbone.get("register_tokens")
    config = {
        "architectures": ["Dinov2Model"], "model_type": "dinov2",
        "hidden_size": dim, "num_hidden_layers": ARCHS[arch]["depth"],
        "num_attention_heads": ARCHS[arch]["num_heads"],
        "mlp_ratio": hidden // dim if hidden % dim == 0 else hidden / dim,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": LAYER_NORM_EPS, "image_size": img_size, "patch_size": patch,
        "num_channels": backbone["patch_embed.proj.weight"].shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in backbone, "layerscale_value": 1.0,
        "use_swiglu_ffn": swiglu, "drop_path_rate": 0.0, "initializer_range": 0.02,
        "dtype": str(backbone["cls_token"].dtype).removeprefix("torch."),
    }
    if registers is not None:
        config.update(architectures=["Dinov2WithRegistersModel"],
                      model_type="dinov2_with_registers",
                      num_register_tokens=int(registers.shape[1]))
    return config


def write_directory(backbone: dict[str, torch.Tensor], path: str | Path) -> None:
    """``path`` as a model directory ``Dinov2Model.from_pretrained`` (or the registers
    model's) loads with no missing or unexpected key."""
    write_model_directory(path, dinov2_config(backbone), from_canonical(backbone),
                          "hf-dinov2")


HF_DINOV2 = register_format(BackboneFormat(
    "hf-dinov2", "Hugging Face Dinov2Model keys embeddings.cls_token, "
    "encoder.layer.N.layer_scale1.lambda1, encoder.layer.N.norm1.* (prefix dinov2. allowed)",
    detect, to_canonical, from_canonical, write=write_directory, refines="hf"))
