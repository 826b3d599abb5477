"""The Hugging Face ``transformers`` ViT layout (``ViTModel``, as in ``facebook/dino-vits16``):
its tensor names, and its model directory (``config.json`` + ``model.safetensors``).

Names, hub form (what ``save_pretrained`` writes, and transformers 4.x and 5.x load), with
the canonical name each becomes (D = hidden size, i = block):

    embeddings.cls_token [1, 1, D]                      cls_token
    embeddings.position_embeddings [1, 1 + s*s, D]      pos_embed
    embeddings.patch_embeddings.projection.{w,b}        patch_embed.proj.{w,b}
    encoder.layer.i.layernorm_before.{w,b}              blocks.i.norm1.{w,b}
    encoder.layer.i.attention.attention.query.{w,b}     blocks.i.attn.qkv.{w,b} rows 0:D
    encoder.layer.i.attention.attention.key.{w,b}       ... rows D:2D
    encoder.layer.i.attention.attention.value.{w,b}     ... rows 2D:3D
    encoder.layer.i.attention.output.dense.{w,b}        blocks.i.attn.proj.{w,b}
    encoder.layer.i.layernorm_after.{w,b}               blocks.i.norm2.{w,b}
    encoder.layer.i.intermediate.dense.{w,b}            blocks.i.mlp.fc1.{w,b}
    encoder.layer.i.output.dense.{w,b}                  blocks.i.mlp.fc2.{w,b}
    layernorm.{w,b}                                     norm.{w,b}

The DINO qkv projection is one [3D, D] matrix whose rows are query, key and value in that
order (the forward reshapes its output to (3, heads, head_dim)); Hugging Face keeps three
[D, D] matrices. Splitting and concatenating rows moves bits, so official -> hf -> official
is bit-identical. Also read: the ``vit.`` prefix of ``ViTFor*`` task models, and the module
names of transformers 5.x (``layers.i.attention.{q,k,v,o}_proj``, ``layers.i.mlp.fc{1,2}``:
a live model's ``state_dict()``). Two parts are not backbone tensors and are left out by
name: ``pooler.*`` (the tanh pooler, which DINO features do not use: they are
``last_hidden_state[:, 0]``) and ``classifier.*`` (a task head). Every other tensor must be
placed, or the conversion fails naming it.

``Dinov2Model`` directories (``model_type`` "dinov2" / "dinov2_with_registers") are read
here too; their tensor names are ``hf_dinov2.py``'s.

``config.json`` (written for ``ViTModel``): hidden size, layers, heads (the ``ARCHS`` entry),
intermediate size, patch size, image size (the stored position grid), ``layer_norm_eps``
1e-6 and ``hidden_act`` "gelu" (this ViT's), ``qkv_bias``. Read back, it is checked against
what this ViT computes: another activation, head count or channel count is an error;
another ``layer_norm_eps`` (1e-12 is transformers' default) is one warning, as it moves
features by about that epsilon only.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from pipelines.files import atomic_write_bytes

from ..models import ARCHS
from .canonical import infer_backbone, module_order
from .files import CheckpointError, load_checkpoint
from .registry import BackboneFormat, Canonical, register_format
from .safetensors_io import read_safetensors, write_safetensors

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-6  # this ViT's LayerNorm epsilon (dino_core.models.vit)
EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
BLOCK_PARTS = {  # hub module inside encoder.layer.i -> canonical module inside blocks.i
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
QKV = ("query", "key", "value")  # attention.attention.<name>: rows of attn.qkv, this order
MODULE_NAMES = {  # transformers 5.x module names inside layers.i -> hub names
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
NOT_BACKBONE = ("pooler.", "classifier.")
REQUIRED = tuple(list(EMBEDDINGS)[:3])
_HUB_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_MODULE_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_CANONICAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
READ_TYPES = ("vit", "dinov2", "dinov2_with_registers")  # hf_dinov2.py: the DINOv2 names
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def hub_name(key: str) -> str:
    """``key`` in the hub form: the ``vit.`` prefix dropped, 5.x module names renamed."""
    key = key.removeprefix("vit.")
    m = _MODULE_BLOCK.match(key)
    if m and m.group(2) in MODULE_NAMES:
        return f"encoder.layer.{m.group(1)}.{MODULE_NAMES[m.group(2)]}.{m.group(3)}"
    if m and m.group(2) in BLOCK_PARTS:  # layernorm_before / _after keep their names
        return f"encoder.layer.{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return key


def detect(state: Mapping[str, object]) -> bool:
    """Whether the embeddings of a ViTModel are there (hub, ``vit.`` or 5.x names)."""
    names = {hub_name(k) for k in state}
    return all(k in names for k in REQUIRED)


def to_canonical(state: dict, source: str) -> Canonical:
    """Every backbone tensor of a ViTModel state dict under its canonical name (module
    docstring), in the module's order; q, k and v concatenated into qkv. An unplaced tensor
    is an error."""
    backbone: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unplaced = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: entry {key!r} is a "
                                  f"{type(value).__name__}, not a tensor")
        name = hub_name(key)
        if name.startswith(NOT_BACKBONE):
            continue
        if name in EMBEDDINGS:
            backbone[EMBEDDINGS[name]] = value
            continue
        m = _HUB_BLOCK.match(name)
        part = m.group(2) if m else ""
        if part in BLOCK_PARTS:
            backbone[f"blocks.{m.group(1)}.{BLOCK_PARTS[part]}.{m.group(3)}"] = value
        elif part.startswith("attention.attention.") and part.split(".")[-1] in QKV:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[part.split(".")[-1]] = value
        else:
            unplaced.append(key)
    return joined(backbone, qkv, unplaced, source, "ViT")


def joined(backbone: dict[str, torch.Tensor],
           qkv: dict[tuple[int, str], dict[str, torch.Tensor]], unplaced: list[str],
           source: str, layout: str) -> Canonical:
    """The end of a Hugging Face conversion: an error for tensors without a place, every
    block's q, k, v rows joined into ``attn.qkv`` (``qkv[(block, weight|bias)][query|key|
    value]``), the module's key order."""
    if unplaced:
        raise CheckpointError(f"checkpoint {source}: {len(unplaced)} tensor(s) of the Hugging "
                              f"Face {layout} layout have no place in this ViT: "
                              f"{', '.join(unplaced[:5])}")
    for (block, param), parts in sorted(qkv.items()):
        missing = [n for n in QKV if n not in parts]
        if missing:
            raise CheckpointError(f"checkpoint {source}: layer {block} has attention "
                                  f"{', '.join(parts)} {param} but no {', '.join(missing)}")
        backbone[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts[n] for n in QKV])
    return Canonical(module_order(backbone, source))


def from_canonical(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub's names for a canonical backbone; qkv split into query, key, value rows."""
    embeddings = {v: k for k, v in EMBEDDINGS.items()}
    parts = {v: k for k, v in BLOCK_PARTS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        m = _CANONICAL_BLOCK.match(key)
        if key in embeddings:
            out[embeddings[key]] = value
        elif m and m.group(2) == "attn.qkv":
            for name, rows in zip(QKV, value.chunk(3, dim=0)):
                out[f"encoder.layer.{m.group(1)}.attention.attention.{name}.{m.group(3)}"] = rows
        elif m and m.group(2) in parts:
            out[f"encoder.layer.{m.group(1)}.{parts[m.group(2)]}.{m.group(3)}"] = value
        else:
            raise CheckpointError(f"backbone tensor {key!r} has no place in the Hugging Face "
                                  "ViT layout (ViTModel)")
    return out


# ----------------------------------------------------------------------------- directories
def vit_config(backbone: dict[str, torch.Tensor]) -> dict:
    """``config.json`` of a ``ViTModel`` computing what this ViT computes on ``backbone``."""
    arch, patch, img_size = infer_backbone(backbone, "the backbone")
    dim = backbone["cls_token"].shape[-1]
    return {
        "architectures": ["ViTModel"], "model_type": "vit",
        "hidden_size": dim, "num_hidden_layers": ARCHS[arch]["depth"],
        "num_attention_heads": ARCHS[arch]["num_heads"],
        "intermediate_size": backbone["blocks.0.mlp.fc1.weight"].shape[0],
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": LAYER_NORM_EPS, "image_size": img_size, "patch_size": patch,
        "num_channels": backbone["patch_embed.proj.weight"].shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in backbone, "encoder_stride": patch,
        "initializer_range": 0.02,
        "dtype": str(backbone["cls_token"].dtype).removeprefix("torch."),
    }


def write_model_directory(path: str | Path, config: dict, tensors: dict[str, torch.Tensor],
                          flag: str) -> None:
    """``path`` as a Hugging Face model directory: ``model.safetensors`` (``tensors``, hub
    names), then ``config.json`` (written last: a directory without it is not a model)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"--format {flag} writes a directory, and {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, path / "model.safetensors")
    atomic_write_bytes(path / "config.json", (json.dumps(config, indent=2) + "\n").encode())


def write_directory(backbone: dict[str, torch.Tensor], path: str | Path) -> None:
    """``path`` as a model directory ``ViTModel.from_pretrained`` loads with no missing,
    unexpected or mismatched key."""
    write_model_directory(path, vit_config(backbone), from_canonical(backbone), "hf")


def check_config(config: dict, source: str) -> None:
    """Refuse a ``config.json`` whose model this ViT does not compute (module docstring)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: {what}; this ViT computes ViTModel's "
                               "(model_type vit, gelu, 3 channels, qkv bias, the ARCHS heads)")

    kind = config.get("model_type", "vit")
    if kind not in READ_TYPES:
        raise bad(f"model_type is {kind!r}, and only Hugging Face ViT (ViTModel) and DINOv2 "
                  "(Dinov2Model, Dinov2WithRegistersModel) directories are read")
    if config.get("hidden_act", "gelu") != "gelu":
        raise bad(f"hidden_act is {config['hidden_act']!r}")
    if config.get("num_channels", 3) != 3 or not config.get("qkv_bias", True):
        raise bad(f"num_channels {config.get('num_channels')}, qkv_bias "
                  f"{config.get('qkv_bias')}")
    dim, depth = config.get("hidden_size"), config.get("num_hidden_layers")
    arch = next((a for a, c in ARCHS.items()
                 if (c["embed_dim"], c["depth"]) == (dim, depth)), None)
    heads = config.get("num_attention_heads")
    if arch is not None and heads != ARCHS[arch]["num_heads"]:
        raise bad(f"{heads} attention heads for hidden size {dim}, where {arch} has "
                  f"{ARCHS[arch]['num_heads']}")
    eps = config.get("layer_norm_eps", 1e-12)  # transformers' ViTConfig default
    if eps != LAYER_NORM_EPS:
        log.warning("%s: layer_norm_eps is %g, this ViT uses %g: features differ by about "
                    "that epsilon", source, eps, LAYER_NORM_EPS)


def read_directory(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face model directory, its ``config.json`` checked first.
    Weights: ``model.safetensors``, its sharded form (``model.safetensors.index.json``), or
    ``pytorch_model.bin`` (read with ``weights_only=True``)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} is a directory without config.json: not a Hugging "
                              f"Face model directory (expected config.json + one of "
                              f"{', '.join(WEIGHT_FILES)})")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None
    check_config(config, str(config_path))
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} holds config.json but no weights (expected one of "
                              f"{', '.join(WEIGHT_FILES)})")
    if weights.name == "pytorch_model.bin":
        return load_checkpoint(weights)
    if weights.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{weights} is not a shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(path / shard))
        return state
    return read_safetensors(weights)


HF = register_format(BackboneFormat(
    "hf", "Hugging Face ViTModel keys embeddings.cls_token, embeddings.position_embeddings, "
    "encoder.layer.N.attention.attention.query|key|value.* (prefix vit. allowed)",
    detect, to_canonical, from_canonical, write=write_directory))
