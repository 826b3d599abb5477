"""``dino-export``: write a checkpoint's teacher backbone as an official backbone-only file."""
from __future__ import annotations

import argparse
import sys

from .eval_common import CHECKPOINT_HELP, run_cli

DESCRIPTION = """\
Export the backbone of a training checkpoint in the format of the released DINO weights
(e.g. dino_deitsmall16_pretrain.pth): a plain state dict of tensors with bare ViT keys
(cls_token, pos_embed, patch_embed.proj.*, blocks.i.*, norm.*), no head, no optimizer.
A backbone with DINOv2's parts (LayerScale, registers, SwiGLU; --recipe dinov2) is written
in the layout of the released DINOv2 weights (e.g. dinov2_vits14_pretrain.pth): the same
keys plus mask_token, register_tokens and blocks.i.ls1/ls2.gamma (--format picks another).

The file loads with strict=True into the official ViT of the reference code (DINOv2's
DinoVisionTransformer built with the same options) and into this project (dino-knn,
dino-linear, dino-attn). Tensors are copied exactly (bit for bit, same dtype). The write is
atomic.
"""

EPILOG = CHECKPOINT_HELP + """

example:
  dino-export --checkpoint runs/vits16/checkpoint.pth --output vits16_backbone.pth
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dino-export", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, metavar="CKPT", help="checkpoint to export from")
    a("--output", required=True, metavar="FILE", help="backbone-only file to write")
    a("--checkpoint-key", default="teacher", choices=("teacher", "student"),
      help="network of a full checkpoint to export (default: teacher)")
    from dino_core.formats import FORMATS
    a("--format", default="auto", choices=("auto", *FORMATS),
      help="layout to write (default auto: dinov2 for a backbone with DINOv2's parts, else dino)")
    return p


def _run(args: argparse.Namespace) -> int:
    from dino_core.formats import export_backbone

    ck = export_backbone(args.checkpoint, args.output, args.checkpoint_key, args.format)
    print(f"dino-export: {ck.name} {args.checkpoint_key} backbone ({len(ck.backbone)} tensors, "
          f"from a {ck.kind} checkpoint) -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-export", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
