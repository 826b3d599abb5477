"""The registry of backbone layouts: which one a state dict uses, and conversions to and from
the canonical layout.

The canonical layout is this project's ``VisionTransformer.state_dict()`` (bare keys
``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) and, for
a head, ``DINOHead.state_dict()``. Every other layout a file may hold (the official DINO
checkpoints' prefixes; Hugging Face ``hf.py``; timm ``timm.py``) is a ``BackboneFormat``:
``detect`` says from the keys whether a state dict uses it, ``to_canonical`` converts it
(placing every tensor, or failing with one clear error), ``from_canonical`` writes it.
Readers (``checkpoints.read_checkpoint``) take the first registered format that detects
the state (a format that ``refines`` another is tried before it); a state no format
detects is one error naming what was found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from .files import CheckpointError


@dataclass(frozen=True)
class Canonical:
    """Tensors in the canonical layout: a backbone, and a DINO head when the file has one.

    extra: other named parts a layout recognises and places (DINOv2's separate iBOT head,
    ``"ibot_head"``), each a state dict; readers of backbones and heads leave them be.
    """

    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneFormat:
    """A layout of backbone (and head) tensors, and how to convert it (module docstring).

    name: the registry key (``dino-export --format`` names it).
    summary: one line saying what the layout looks like, for errors.
    detect(state) -> bool, from the keys only.
    to_canonical(state, source) -> Canonical; ``source`` names the file in errors.
    from_canonical(backbone) -> the layout's backbone state dict.
    write(backbone, path): how ``export_backbone`` writes a canonical backbone when the
        layout is more than one tensor file (Hugging Face: a directory with its config);
        None: the ``from_canonical`` dict in one file (``.pth``, or ``.safetensors``).
    refines: the registered format whose states this one's are a special case of (DINOv2's
        keys are DINO's plus some), so that detection tries it first; None for most.
    """

    name: str
    summary: str
    detect: Callable[[Mapping[str, object]], bool]
    to_canonical: Callable[[dict, str], Canonical]
    from_canonical: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    write: Callable[[dict[str, torch.Tensor], Path], None] | None = None
    refines: str | None = None


FORMATS: dict[str, BackboneFormat] = {}


def register_format(fmt: BackboneFormat) -> BackboneFormat:
    """Add ``fmt`` to the registry (detection order: ``detect_format``)."""
    if fmt.name in FORMATS:
        raise ValueError(f"a backbone format named {fmt.name!r} is already registered")
    if fmt.refines is not None and fmt.refines not in FORMATS:
        raise ValueError(f"format {fmt.name!r} refines {fmt.refines!r}, which is not registered")
    FORMATS[fmt.name] = fmt
    return fmt


def found_keys(state: Mapping[str, object], n: int = 5) -> str:
    """The first ``n`` keys of ``state`` with their shapes, for an error message."""
    def shape(v: object) -> str:
        return str(list(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__
    first = ", ".join(f"{k} {shape(v)}" for k, v in list(state.items())[:n])
    more = f" ... ({len(state)} entries)" if len(state) > n else ""
    return (first + more) or "nothing"


def detect_format(state: Mapping[str, object], source: str) -> BackboneFormat:
    """The first format whose ``detect`` accepts ``state``: those that refine another
    first, then the others, each in registration order."""
    ordered = sorted(FORMATS.values(), key=lambda f: f.refines is None)  # stable
    for fmt in ordered:
        if fmt.detect(state):
            return fmt
    known = "; ".join(f"{f.name}: {f.summary}" for f in FORMATS.values())
    raise CheckpointError(f"checkpoint {source} holds no ViT backbone in a known layout "
                          f"({known}); found {found_keys(state)}")
