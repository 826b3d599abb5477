"""``dino-attn``: pictures of the last block's CLS attention, one per head."""
from __future__ import annotations

import argparse
import sys

from .eval_common import (CHECKPOINT_HELP, add_checkpoint_args, add_device_arg,
                          load_cli_backbone, run_cli)

DESCRIPTION = """\
Show where a DINO ViT looks: the attention of the CLS token to every patch in the last
block, one map per head (the paper's Figure 1 and 3).

The image is resized so its shorter side is --image-size (0 keeps it), then centre-cropped to
a multiple of the patch size; any size works (position embeddings are interpolated). Written
into OUTPUT_DIR:
  image.png           the picture the model saw
  attn-head{i}.png    head i's attention (per head normalised to sum to 1) as a heat map
                      over the image, nearest-upsampled from the patch grid
  mask-head{i}.png    the image where head i keeps the top --threshold of its attention mass
                      (the rest darkened)
  grid.png            all heads side by side for a quick look (heat maps, then masks)
"""

EPILOG = CHECKPOINT_HELP + """

tips:
  Heads specialise: some segment the main object, others follow parts or background. Smaller
  patches (ViT-S/8) give much sharper maps. --threshold 0.6 is the paper's setting; lower
  keeps a tighter mask.

example:
  dino-attn --checkpoint runs/quick/checkpoint.pth --image cat.jpg --output-dir attn/
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dino-attn", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    a = p.add_argument
    a("--image", required=True, help="an image file (any format PIL reads)")
    a("--output-dir", required=True, help="where the PNG files are written")
    a("--image-size", type=int, default=480,
      help="shorter side after resizing, in pixels (default 480; 0 keeps the image size)")
    a("--threshold", type=float, default=0.6,
      help="attention mass kept by the masks, in (0, 1] (default 0.6)")
    add_device_arg(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from dino_core.eval.attention import attention_pictures
    from dino_core.train.run import resolve_device

    if args.image_size < 0:
        raise ValueError(f"--image-size must be >= 0, got {args.image_size}")
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    backbone, ck = load_cli_backbone(args, resolve_device(args.device))
    written = attention_pictures(backbone, args.image, args.output_dir,
                                 args.image_size or None, args.threshold)
    print(f"dino-attn: {ck.name} ({backbone.num_heads} heads) -> {len(written)} PNG files in "
          f"{args.output_dir} (see grid.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-attn", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
