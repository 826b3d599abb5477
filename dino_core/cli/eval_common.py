"""What the evaluation commands share: checkpoint options, device choice, error reporting."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

CHECKPOINT_HELP = """\
checkpoints:
  CKPT may be this project's checkpoint (OUTPUT_DIR/checkpoint.pth of dino-train), an official
  DINO checkpoint (student/teacher/dino_loss/args, args saved as a plain dict), a
  backbone-only weight file (as released, timm's, or written by dino-export; with or without
  module./backbone. prefixes), a .pth or a .safetensors file, or a Hugging Face ViTModel
  directory (config.json + model.safetensors, e.g. facebook/dino-vits16) or its
  model.safetensors. The layout is detected from the tensors; a conversion that does not
  place every tensor is an error. The architecture is read from the weights;
  --arch/--patch-size only assert it. Files that pickle Python objects (the reference's
  argparse.Namespace) are refused; the error explains how to convert them once."""


def add_checkpoint_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    a = parser.add_argument
    a("--checkpoint", required=required, metavar="CKPT",
      help="weights to evaluate (see 'checkpoints' below)")
    a("--checkpoint-key", default="teacher", choices=("teacher", "student"),
      help="network of a full checkpoint to use (default: teacher, as in the paper)")
    a("--arch", choices=("vit_tiny", "vit_small", "vit_base", "vit_large"),
      help="expected architecture; a checkpoint of another one is an error")
    a("--patch-size", type=int, help="expected patch size")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (a GPU when there is one) | cpu | cuda | cuda:N")


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="folder with train/<class>/* and "
                        "val/<class>/*; default: the embedded dataset (built once, cached)")


def resolve_eval_data(path: str | None) -> Path:
    """``--data`` as a Path; without it, the embedded default dataset's root."""
    if path is not None:
        return Path(path)
    from pipelines.embedded import default_dataset
    return default_dataset()


def load_cli_backbone(args: argparse.Namespace, device):
    """The frozen, eval-mode backbone named by the checkpoint options, on ``device``."""
    from dino_core.formats import load_backbone

    backbone, ck = load_backbone(args.checkpoint, args.arch, args.patch_size,
                                 args.checkpoint_key)
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.to(device).eval(), ck


def run_cli(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
            run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse ``argv`` and run; expected failures become one line on stderr and exit code 2."""
    from dino_core.formats.files import CheckpointError
    from pipelines.folder import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
