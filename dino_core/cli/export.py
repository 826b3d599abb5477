"""``dino-export``: write a checkpoint's backbone for the official code, timm or Hugging Face."""
from __future__ import annotations

import argparse
import sys

from .eval_common import CHECKPOINT_HELP, run_cli

DESCRIPTION = """\
Export the backbone of a checkpoint (teacher by default) for the code that will use it:

  --format official  (default) the released DINO weights' layout (dino_deitsmall16_pretrain.pth):
                     a backbone-only state dict with bare ViT keys (cls_token, pos_embed,
                     patch_embed.proj.*, blocks.i.*, norm.*), no head, no optimizer. Loads
                     with strict=True into the reference code's ViT and into this project.
                     A backbone with DINOv2's parts (LayerScale, registers, SwiGLU; --recipe
                     dinov2) is written in the released DINOv2 weights' layout instead
                     (dinov2_vits14_pretrain.pth: the same keys plus mask_token,
                     register_tokens, blocks.i.ls1/ls2.gamma), which DINOv2's
                     DinoVisionTransformer built with the same options loads strictly.
                     (--format dino / dinov2 name one of the two; auto = official.)
  --format timm      the same keys, which are timm's: timm.create_model(
                     "vit_small_patch16_224.dino", pretrained=True,
                     pretrained_cfg_overlay=dict(file=OUTPUT)) loads it.
  --format hf        a Hugging Face model directory: config.json + model.safetensors in the
                     hub's names (q, k, v split); transformers.ViTModel.from_pretrained(OUTPUT,
                     add_pooling_layer=False) loads it with no missing or unexpected keys,
                     and its last_hidden_state[:, 0] is this backbone's output. A backbone
                     with DINOv2's parts is written for Dinov2Model (registers:
                     Dinov2WithRegistersModel) instead (--format hf-dinov2 names it).

official and timm write a torch file, or a safetensors file when OUTPUT ends in .safetensors
(that needs the safetensors package: pip install 'dino-fast[interop]'; so does hf). Tensors
are copied exactly (bit for bit, same dtype); every file is written atomically. Each output
is read back by every command here (dino-knn, dino-linear, dino-attn, --init-backbone ...).
"""

EPILOG = CHECKPOINT_HELP + """

examples:
  dino-export --checkpoint runs/vits16/checkpoint.pth --output vits16_backbone.pth
  dino-export --checkpoint runs/vits16/checkpoint.pth --format timm --output vits16.safetensors
  dino-export --checkpoint runs/vits16/checkpoint.pth --format hf --output vits16-hf/
"""

# --format -> the layout's name in dino_core.formats.FORMATS
# --format -> registered layout; official (auto): dino, or dinov2 for DINOv2's parts
LAYOUTS = {"official": "auto", "timm": "timm", "hf": "hf", "auto": "auto", "dino": "dino",
           "dinov2": "dinov2", "hf-dinov2": "hf-dinov2"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dino-export", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, metavar="CKPT", help="checkpoint to export from")
    a("--output", required=True, metavar="PATH",
      help="file to write (official, timm: .pth or .safetensors), or directory (hf)")
    a("--format", default="official", choices=tuple(LAYOUTS),
      help="layout to write (default: official)")
    a("--checkpoint-key", default="teacher", choices=("teacher", "student"),
      help="network of a full checkpoint to export (default: teacher)")
    a("--student", action="store_const", const="student", dest="checkpoint_key",
      help="export the student backbone (same as --checkpoint-key student)")
    return p


def _run(args: argparse.Namespace) -> int:
    from dino_core.formats import export_backbone

    ck = export_backbone(args.checkpoint, args.output, args.checkpoint_key,
                         layout=LAYOUTS[args.format])
    print(f"dino-export: {ck.name} {args.checkpoint_key} backbone ({len(ck.backbone)} tensors, "
          f"from a {ck.kind} checkpoint) -> {args.output} ({args.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-export", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
