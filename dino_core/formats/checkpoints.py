"""Weight files in, weight files out: this project's checkpoints, the official DINO ones,
backbone-only files, safetensors files and Hugging Face model directories.

A path is read by its content, never by its name: a directory is a Hugging Face model
directory (``hf.read_directory``: ``config.json`` checked, then its weights); a file that
starts like a safetensors file is one (``safetensors_io``); anything else is a torch file.
What comes out is a container around a state dict; three kinds of container are recognised
by their content:

- ``project``: a dino-train checkpoint (``teacher`` / ``student`` entries,
  ``config["model"]`` with ``arch`` / ``patch_size`` / ``out_dim``; layout in
  ``dino_core/train/checkpoint.py``), one file or a sharded folder (``--parallel fsdp``,
  ``sharded.py``: the entry asked for is gathered from its shards into plain tensors);
- ``official``: a full checkpoint of the reference code (``student``, ``teacher``,
  ``dino_loss``, and ``args`` saved as a plain dict);
- ``backbone``: a bare state dict as released, possibly under ``state_dict`` / ``model``
  (DINO's and DINOv2's released backbones, ``dinov2.py``).

The state dict's layout is detected from its keys by the format registry (``registry.py``;
the official DINO layout, ``dino.py``, is its first entry; DINOv2's, ``dinov2.py``, is tried
before it; then timm's, ``timm.py``, and Hugging Face's, ``hf.py``) and converted to the canonical
layout; the architecture is read from the weights themselves (``canonical.py``). A declared
architecture (the file's config, or the caller's ``arch``) that disagrees is one clear error
naming both.

Every read uses ``torch.load(weights_only=True)``. Files that pickle Python objects (the
reference pickles an ``argparse.Namespace`` in ``args``) are refused with instructions to
convert them once, in a trusted environment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import DINOHead, VisionTransformer
from .canonical import head_from_state, infer_backbone, module_order, vit_from_state
from .dino import DINO
from .dinov2 import DINOV2, has_dinov2_parts, release_interpolation
from . import timm, hf, hf_dinov2  # registered after dino and dinov2, in this order
from .files import CheckpointError, load_checkpoint, save_checkpoint
from .registry import FORMATS, detect_format
from .safetensors_io import is_safetensors, read_safetensors, write_safetensors
from .sharded import is_sharded_checkpoint, read_entry, read_run_state

# Old DINO releases named the small models after DeiT.
ARCH_ALIASES = {"deit_tiny": "vit_tiny", "deit_small": "vit_small"}


@dataclass(frozen=True)
class ImportedCheckpoint:
    """Backbone (and head) weights found in one file, in the canonical layout.

    backbone: keys as ``VisionTransformer.state_dict()`` (``cls_token`` [1, 1, D] ...).
    head: keys as ``DINOHead.state_dict()`` or None for backbone-only files.
    center: the DINO loss center [1, K] when the file holds one.
    interpolation: how the backbone resizes its position embeddings (``VisionTransformer``
        keywords ``interpolate_offset`` / ``interpolate_antialias``): from a project
        checkpoint's config, else DINOv2's release convention (``dinov2.py``).
    """

    source: str
    kind: str  # "project" | "official" | "backbone"
    arch: str
    patch_size: int
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    center: torch.Tensor | None = None
    layout: str = DINO.name  # the registered format the state dict was in
    interpolation: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.patch_size}"


# ----------------------------------------------------------------------------- reading
def load_weights(path: str | Path) -> dict:
    """The dict a weight path holds, by its content (module docstring)."""
    path = Path(path)
    if path.is_dir():
        return hf.read_directory(path)
    if is_safetensors(path):
        return read_safetensors(path)
    return load_checkpoint(path)


def _declared(obj: dict) -> tuple[str | None, int | None]:
    """The (arch, patch_size) a full checkpoint declares in its config / args, if any."""
    cfg = obj.get("config")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    decl = model if isinstance(model, dict) else obj.get("args")
    if not isinstance(decl, dict):
        return None, None
    arch = decl.get("arch")
    arch = ARCH_ALIASES.get(arch, arch) if isinstance(arch, str) else None
    patch = decl.get("patch_size")
    return arch, patch if isinstance(patch, int) else None


def _interpolation(obj: dict, backbone: dict[str, torch.Tensor]) -> dict[str, object]:
    """The position-embedding resize of the backbone in ``obj``: what a project checkpoint's
    config says, else the convention of DINOv2's released models (``release_interpolation``:
    DINO's settings for every file without registers)."""
    cfg = obj.get("config")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict) and "interpolate_offset" in model:
        return {"interpolate_offset": float(model["interpolate_offset"]),
                "interpolate_antialias": bool(model.get("interpolate_antialias", False))}
    return release_interpolation(backbone)


def _check_arch(source: str, found: tuple[str, int], wanted: tuple[str | None, int | None],
                who: str) -> None:
    arch, patch = wanted
    if (arch is not None and arch != found[0]) or (patch is not None and patch != found[1]):
        raise CheckpointError(
            f"checkpoint {source} holds a {found[0]}/{found[1]} backbone, but {who} "
            f"{arch or found[0]}/{patch or found[1]}; use a checkpoint of that architecture, "
            f"or {found[0]} with patch size {found[1]}")


def read_checkpoint(path: str | Path, checkpoint_key: str = "teacher", arch: str | None = None,
                    patch_size: int | None = None) -> ImportedCheckpoint:
    """Read any supported file and return its backbone (and head) weights with bare keys.

    checkpoint_key: which network of a full checkpoint to take ("teacher" or "student").
    arch / patch_size: what the caller expects; a different architecture in the file is an
        error naming both.
    """
    source = str(path)
    if is_sharded_checkpoint(path):  # a folder of --parallel fsdp: only the entry asked for
        obj = {**read_run_state(path), checkpoint_key: read_entry(path, checkpoint_key)}
    else:  # a file, or a Hugging Face folder
        obj = load_weights(path)
    center = None
    if checkpoint_key in obj and isinstance(obj[checkpoint_key], dict):
        state = obj[checkpoint_key]
        kind = "project" if isinstance(obj.get("config"), dict) else "official"
        loss = obj.get("dino_loss")
        center = loss.get("center") if isinstance(loss, dict) else None
    elif any(isinstance(obj.get(k), dict) for k in ("state_dict", "model")):
        wrapper = "state_dict" if isinstance(obj.get("state_dict"), dict) else "model"
        state, kind = obj[wrapper], "backbone"
    elif {"teacher", "student"} & set(obj):
        raise CheckpointError(f"checkpoint {source} has no {checkpoint_key!r} entry "
                              f"(it has {', '.join(map(str, obj))})")
    else:
        state, kind = obj, "backbone"
    fmt = detect_format(state, source)
    canonical = fmt.to_canonical(state, source)
    backbone = canonical.backbone
    if is_safetensors(path):  # its names are sorted: take the module's order
        backbone = module_order(backbone, source)
    found_arch, found_patch, _ = infer_backbone(backbone, source)
    _check_arch(source, (found_arch, found_patch), _declared(obj), "its own config declares")
    _check_arch(source, (found_arch, found_patch), (arch, patch_size),
                "the requested architecture (--arch / --patch-size) is")
    return ImportedCheckpoint(source, kind, found_arch, found_patch, backbone, canonical.head,
                              center, fmt.name, _interpolation(obj, backbone))


# ----------------------------------------------------------------------------- building
def build_backbone(ck: ImportedCheckpoint) -> VisionTransformer:
    """A ViT of the file's architecture and options with its weights loaded strictly (eval
    mode), resizing position embeddings as the file's model did."""
    return vit_from_state(ck.backbone, ck.source, ck.interpolation)


def build_head(ck: ImportedCheckpoint) -> DINOHead:
    """The DINO head of the file, its structure read from the weight shapes, loaded strictly."""
    return head_from_state(ck.head, ck.source)


def load_backbone(path: str | Path, arch: str | None = None, patch_size: int | None = None,
                  checkpoint_key: str = "teacher") -> tuple[VisionTransformer, ImportedCheckpoint]:
    """Read ``path`` (any supported kind) and return (ViT with its weights, what was read)."""
    ck = read_checkpoint(path, checkpoint_key, arch, patch_size)
    return build_backbone(ck), ck


# ----------------------------------------------------------------------------- writing
def export_backbone(checkpoint: str | Path, output: str | Path,
                    checkpoint_key: str = "teacher", layout: str = "auto") -> ImportedCheckpoint:
    """Write the ``checkpoint_key`` backbone of ``checkpoint`` in the registered ``layout``.

    ``auto`` (the default): the official layout of the backbone's family, whatever layout it
    was read in: ``dinov2`` for a backbone with DINOv2's parts (LayerScale, registers, mask
    token, SwiGLU), else ``dino``. ``dino``: a plain dict of tensors with bare ViT keys (as
    the released ``dino_deitsmall16_pretrain.pth``), which the reference code, timm and this
    project load strictly; ``timm``: the same keys. ``dinov2``: the DINOv2 hub models' layout
    (``dinov2.py``). These are one file: a ``.pth`` torch file, or a safetensors file when
    ``output`` ends in ``.safetensors``. ``hf``: a Hugging Face model directory
    (``hf.write_directory``: ``ViTModel``; for a backbone with DINOv2's parts
    ``hf_dinov2.write_directory``: ``Dinov2Model`` / ``Dinov2WithRegistersModel``).
    Tensors are written exactly as stored (no dtype change).
    """
    if layout != "auto" and layout not in FORMATS:
        raise ValueError(f"unknown backbone layout {layout!r}; choose from auto, "
                         f"{', '.join(FORMATS)}")
    ck = read_checkpoint(checkpoint, checkpoint_key)
    build_backbone(ck)  # refuse to write a file that would not load strictly
    if layout == "auto":
        layout = DINOV2.name if has_dinov2_parts(ck.backbone) else DINO.name
    elif layout == hf.HF.name and has_dinov2_parts(ck.backbone):
        layout = hf_dinov2.HF_DINOV2.name  # Dinov2Model's names: ViTModel has no place for them
    fmt = FORMATS[layout]
    if fmt.write is not None:
        fmt.write(ck.backbone, Path(output))
    elif str(output).endswith(".safetensors"):
        write_safetensors(fmt.from_canonical(ck.backbone), output)
    else:
        save_checkpoint(fmt.from_canonical(ck.backbone), output)
    return ck
