"""Checkpoint interchange: read this project's, the official DINO and backbone-only files.

Three kinds of file are recognised by their content, never by their name:

- ``project``: written by ``dino_core/checkpoint.py`` (``teacher`` with ``backbone.*`` /
  ``head.*`` keys, ``config["model"]`` with ``arch`` / ``patch_size`` / ``out_dim``);
- ``official``: a full checkpoint of the reference code (``student`` with
  ``module.backbone.*`` / ``module.head.*``, ``teacher`` with ``backbone.*`` / ``head.*``,
  ``dino_loss``, and ``args`` saved as a plain dict);
- ``backbone``: a bare ViT state dict as released (``cls_token``, ``pos_embed``, ``blocks.i...``),
  possibly with ``module.`` / ``backbone.`` prefixes, possibly under ``state_dict`` / ``model``.

The architecture is read from the weights themselves (embedding width, depth, patch size,
position-grid size); a declared architecture (the file's config, or the caller's ``arch``)
that disagrees is one clear error naming both. Head weight-norm parameters are accepted under
both the old names (``weight_g`` / ``weight_v``) and torch's parametrisation names
(``parametrizations.weight.original0`` / ``original1``).

Every read uses ``torch.load(weights_only=True)``. Files that pickle Python objects (the
reference pickles an ``argparse.Namespace`` in ``args``) are refused with instructions to
convert them once, in a trusted environment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dino_core.formats.files import CheckpointError, load_checkpoint, save_checkpoint
from dino_core.models import ARCHS, DINOHead, VisionTransformer, build_vit

# Old DINO releases named the small models after DeiT.
ARCH_ALIASES = {"deit_tiny": "vit_tiny", "deit_small": "vit_small"}
WEIGHT_NORM_RENAMES = {"parametrizations.weight.original0": "weight_g",
                       "parametrizations.weight.original1": "weight_v"}

__all__ = ["CheckpointError", "ImportedCheckpoint", "backbone_state", "build_backbone",
           "build_head", "export_backbone", "infer_backbone", "load_backbone", "read_checkpoint"]


@dataclass(frozen=True)
class ImportedCheckpoint:
    """Backbone (and head) weights found in one file, with unprefixed keys.

    backbone: keys as ``VisionTransformer.state_dict()`` (``cls_token`` [1, 1, D] ...).
    head: keys as ``DINOHead.state_dict()`` or None for backbone-only files.
    center: the DINO loss center [1, K] when the file holds one.
    """

    source: str
    kind: str  # "project" | "official" | "backbone"
    arch: str
    patch_size: int
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    center: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.patch_size}"


# ----------------------------------------------------------------------------- reading
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


def split_state(state: dict[str, object], source: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a (possibly DDP-prefixed) state dict into (backbone, head) with bare keys."""
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
    return backbone, head


def infer_backbone(state: dict[str, torch.Tensor], source: str) -> tuple[str, int, int]:
    """(arch, patch_size, img_size) of a bare ViT state dict, read from the tensor shapes."""
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
    obj = load_checkpoint(path)
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
    backbone, head = split_state(state, source)
    found_arch, found_patch, _ = infer_backbone(backbone, source)
    _check_arch(source, (found_arch, found_patch), _declared(obj), "its own config declares")
    _check_arch(source, (found_arch, found_patch), (arch, patch_size), "the requested architecture (--arch / --patch-size) is")
    return ImportedCheckpoint(source, kind, found_arch, found_patch, backbone,
                              head or None, center)


# ----------------------------------------------------------------------------- building
def _materialise(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], what: str,
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


def build_backbone(ck: ImportedCheckpoint) -> VisionTransformer:
    """A ViT of the file's architecture with its weights loaded strictly (eval mode)."""
    _, _, img_size = infer_backbone(ck.backbone, ck.source)
    model = _materialise(lambda: build_vit(ck.arch, ck.patch_size, img_size=img_size),
                         ck.backbone, "backbone", ck.source)
    return model.eval()


def build_head(ck: ImportedCheckpoint) -> DINOHead:
    """The DINO head of the file, its structure read from the weight shapes, loaded strictly."""
    if ck.head is None:
        raise CheckpointError(f"checkpoint {ck.source} holds no DINO head (backbone-only file)")
    h = ck.head
    if "last_layer.weight_v" not in h:
        raise CheckpointError(f"checkpoint {ck.source}: head has no last_layer.weight_v")
    linears = sorted((k for k in h if k.startswith("mlp.") and k.endswith(".weight")
                      and h[k].ndim == 2), key=lambda k: int(k.split(".")[1]))
    if not linears:
        raise CheckpointError(f"checkpoint {ck.source}: head has no mlp linear layers")
    out_dim, bottleneck = h["last_layer.weight_v"].shape
    head = _materialise(lambda: DINOHead(
        in_dim=h[linears[0]].shape[1], out_dim=out_dim, nlayers=len(linears),
        use_bn=any(k.endswith("running_mean") for k in h), hidden_dim=h[linears[0]].shape[0],
        bottleneck_dim=bottleneck), h, "DINO head", ck.source)
    return head.eval()


def load_backbone(path: str | Path, arch: str | None = None, patch_size: int | None = None,
                  checkpoint_key: str = "teacher") -> tuple[VisionTransformer, ImportedCheckpoint]:
    """Read ``path`` (any supported kind) and return (ViT with its weights, what was read)."""
    ck = read_checkpoint(path, checkpoint_key, arch, patch_size)
    return build_backbone(ck), ck


# ----------------------------------------------------------------------------- writing
def backbone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A ViT's state dict as the official backbone-only files store it: bare keys, CPU."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def export_backbone(checkpoint: str | Path, output: str | Path,
                    checkpoint_key: str = "teacher") -> ImportedCheckpoint:
    """Write the teacher backbone of ``checkpoint`` as an official backbone-only file.

    The output is a plain dict of tensors with bare ViT keys (as the released
    ``dino_deitsmall16_pretrain.pth``), which the reference code and this project both load
    strictly. Tensors are written exactly as stored (no dtype change).
    """
    ck = read_checkpoint(checkpoint, checkpoint_key)
    build_backbone(ck)  # refuse to write a file that would not load strictly
    save_checkpoint({k: v.contiguous() for k, v in ck.backbone.items()}, output)
    return ck
