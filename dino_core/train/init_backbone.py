"""``--init-backbone``: start a run's student and teacher backbones from a backbone file.

Accepts every file ``dino_core.formats.read_checkpoint`` reads: a released backbone
(e.g. ``dino_deitsmall16_pretrain.pth``: bare keys ``cls_token``, ``pos_embed``,
``patch_embed.proj.weight``, ``blocks.0.norm1.weight`` ...), timm's, what ``dino-export``
writes (``.pth``, ``.safetensors``, a Hugging Face directory), a Hugging Face ``ViTModel``
directory or its ``model.safetensors``, or a full checkpoint of this project or of the reference code (its teacher backbone is taken).
The architecture is read from the tensor shapes; a file of another architecture or patch
size than the run's is one clear error naming what the file holds.

The head is not taken (it starts fresh), and nothing else is: this is a start, not a resume,
so optimiser, schedules, loss center and data order start at zero.

A file trained at another resolution has another position grid; its embedding is resized
to the run's grid with the model's own ``interpolate_pos_encoding`` (upstream's exact
bicubic resize), the very embedding that model would use at that input size.

The backbone options the weights show (register tokens, LayerScale, SwiGLU) must be the
run's (``model.register_tokens``, ``model.layerscale``, ``model.ffn_layer``), or one error
names both. The mask token is the one tensor a start may leave out: a file's mask token is
not taken by a model without one (a recipe that never masks), and a model with one keeps
its initial zeros when the file has none (DINO's weights in a DINOv2 run).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..formats import build_backbone, read_checkpoint
from ..formats.canonical import options_from_state
from ..formats.files import CheckpointError, load_state
from ..models import VisionTransformer

log = logging.getLogger(__name__)


def read_init_backbone(path: str | Path, arch: str, patch_size: int
                       ) -> dict[str, torch.Tensor]:
    """The backbone tensors of ``path`` (bare ViT keys), checked against ``arch/patch_size``."""
    path = Path(path)
    if not path.exists():  # a file, or a Hugging Face model directory
        raise CheckpointError(f"--init-backbone file not found: {path}")
    try:
        ck = read_checkpoint(path, "teacher")
        build_backbone(ck)  # every tensor of the ViT present, or one error now (no copy)
    except CheckpointError as e:
        raise CheckpointError(f"--init-backbone: {e}") from None
    if (ck.arch, ck.patch_size) != (arch, patch_size):
        raise CheckpointError(
            f"--init-backbone {path} holds a {ck.arch} backbone with patch size "
            f"{ck.patch_size}, but this run builds {arch} with patch size {patch_size}; "
            f"use --arch {ck.arch} --patch-size {ck.patch_size} or another file")
    return ck.backbone


def resized_pos_embed(pos_embed: torch.Tensor, model: VisionTransformer) -> torch.Tensor:
    """``pos_embed`` [1, 1 + s*s, D] of a file resized to ``model``'s grid (unchanged when
    the grids agree), through the model's own interpolation."""
    want = model.pos_embed.shape[1]
    if pos_embed.shape[1] == want:
        return pos_embed
    side = int(round((want - 1) ** 0.5))
    pixels = side * model.patch_size
    own = model.pos_embed
    try:  # the model's method, run on the file's embedding
        model.pos_embed = torch.nn.Parameter(pos_embed.detach().clone(), requires_grad=False)
        with torch.no_grad():
            return model.interpolate_pos_encoding(pixels, pixels).detach().clone()
    finally:
        model.pos_embed = own


def _describe(options: dict[str, object]) -> str:
    return (f"model.register_tokens={options['num_register_tokens']}, "
            f"model.layerscale {'on' if options['layerscale'] else 'off (0)'}, "
            f"model.ffn_layer={options['ffn_layer']}")


def load_init_backbone(model: VisionTransformer, state: dict[str, torch.Tensor],
                       path: str | Path) -> None:
    """Load ``state`` into ``model`` strictly (``checkpoint.load_state``: a mismatch is one
    readable error), its position embedding first resized to the model's grid; backbone
    options and the mask token as the module docstring says."""
    state = dict(state)
    own = model.state_dict()
    found, want = options_from_state(state), options_from_state(own)
    found.pop("mask_token"), want.pop("mask_token")
    if found != want:
        raise CheckpointError(f"--init-backbone {path} holds a backbone with {_describe(found)}"
                              f", but this run builds {_describe(want)}; set the run's model "
                              "options to the file's")
    if "mask_token" in state and "mask_token" not in own:
        log.info("--init-backbone %s: its mask token is not taken (this model has none)", path)
        del state["mask_token"]
    elif "mask_token" in own and "mask_token" not in state:
        state["mask_token"] = own["mask_token"]  # the file has none: keep the initial zeros
    if "pos_embed" in state:
        state["pos_embed"] = resized_pos_embed(state["pos_embed"], model)
    load_state(model, state, "the --init-backbone backbone", path)
