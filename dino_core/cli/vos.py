"""``dino-vos``: DAVIS-2017 video object segmentation by label propagation, J and F."""
from __future__ import annotations

import argparse
import sys

from .eval_common import CHECKPOINT_HELP, add_device_arg, run_cli
from .eval_session import add_dump_args, eval_session, protocol_parser

DESCRIPTION = """\
Semi-supervised video object segmentation on DAVIS-2017 by label propagation, the DINO
paper's protocol: no training, only nearest neighbours between patch features.

The first frame's mask is given. For every later frame, each patch takes the labels of its
--topk most similar patches (cosine of the last block's patch tokens), searched in the first
frame and the --n-last-frames frames before it, within --neighbourhood patches of its own
position, weighted by softmax(similarity / --temperature). The soft labels are upsampled to
pixels and the argmax is written as an indexed PNG per frame, in DAVIS's palette:
OUTPUT_DIR/<sequence>/<frame>.png (the files the official DAVIS tools read).

Sequences annotated on every frame are scored with our implementation of the DAVIS
semi-supervised measures: region similarity J (IoU) and boundary F (boundary precision and
recall within ceil(0.008 x image diagonal) pixels), per object, first and last frames left
out, void (255) pixels ignored; J-Mean and F-Mean average over all objects; J&F is their
mean. Prints one line per sequence and a summary line.
"""

EPILOG = CHECKPOINT_HELP + """

data:
  DAVIS_ROOT/JPEGImages/480p/<seq>/*.jpg, DAVIS_ROOT/Annotations/480p/<seq>/*.png and the
  split file DAVIS_ROOT/ImageSets/2017/val.txt (download DAVIS-2017 trainval yourself from
  https://davischallenge.org; nothing is downloaded by this command). A sequence with only
  its first frame annotated (test-dev) is segmented but not scored.

the protocol's settings (defaults are the paper's):
  frames       shorter side --short-side 480, longer side floored to a multiple of
               --size-multiple 64 (DAVIS 854x480 -> 832x480: 104x60 patches of 8 px)
  context      the first frame + --n-last-frames 7 previous frames
  neighbours   --neighbourhood 12 patches around each patch (0: anywhere), --topk 5
  weights      softmax(similarity / --temperature), 0.1 as in DINO's script
  Patch 8 models (ViT-S/8: J&F 69.9 in the paper) are much better than patch 16 (61.8):
  the label map is only as fine as the patch grid.

cost:
  One backbone pass per frame (batch 1) and a [h*w x h*w] similarity per context frame:
  at 480p with patch 8 that is 6240^2 entries per context frame; use a GPU.

several GPUs / nodes:
  torchrun --nproc-per-node 8 -m dino_core.cli.vos --checkpoint CKPT --data DAVIS_ROOT ...
  Sequences are dealt to the ranks in turn; every rank writes its own PNGs; rank 0 prints.

examples:
  dino-vos --checkpoint dino_deitsmall8_pretrain.pth --data /data/DAVIS --output-dir vos/
  dino-vos --checkpoint runs/quick/checkpoint.pth --data /data/DAVIS --sequences dog \\
      --output-dir vos/ --dump-features feats/
"""


def build_parser() -> argparse.ArgumentParser:
    from dino_core.eval.video_segmentation import PropagationConfig

    d = PropagationConfig()
    p = protocol_parser("dino-vos", DESCRIPTION, EPILOG, checkpoint_required=True)
    a = p.add_argument
    a("--data", required=True, metavar="DAVIS_ROOT", help="the DAVIS-2017 folder (see 'data')")
    a("--output-dir", required=True, help="where the predicted masks are written")
    a("--split-file", help="sequence list (default: DAVIS_ROOT/ImageSets/2017/val.txt)")
    a("--sequences", nargs="+", metavar="NAME", help="these sequences instead of a split file")
    a("--resolution", default="480p", help="frame folder under JPEGImages/ (default: 480p)")
    a("--n-last-frames", type=int, default=d.n_last_frames,
      help=f"previous frames used as context besides the first (default: {d.n_last_frames})")
    a("--neighbourhood", type=int, default=d.neighbourhood, metavar="PATCHES",
      help="search radius around each patch, in patches; 0 = whole frame "
           f"(default: {d.neighbourhood})")
    a("--topk", type=int, default=d.topk, help=f"neighbours per patch (default: {d.topk})")
    a("--temperature", type=float, default=d.temperature,
      help=f"softmax temperature of the similarities (default: {d.temperature})")
    a("--short-side", type=int, default=d.short_side,
      help=f"frames are resized to this shorter side (default: {d.short_side})")
    a("--size-multiple", type=int, default=d.size_multiple,
      help=f"the longer side is floored to a multiple of this (default: {d.size_multiple})")
    add_device_arg(p)
    add_dump_args(p, "<seq>.pth per sequence: patch features [T, h*w, D] float16", load=False)
    return p


def format_summary(summary, output_dir: str, unscored: list[str]) -> str:
    """The summary line (percentages)."""
    note = f"; {len(unscored)} sequence(s) not scored" if unscored else ""
    return (f"dino-vos: J&F {100 * summary.jf_mean:.1f}  J {100 * summary.j_mean:.1f}  "
            f"F {100 * summary.f_mean:.1f}  (J-recall {100 * summary.j_recall:.1f}, F-recall "
            f"{100 * summary.f_recall:.1f}; {summary.sequences} sequence(s), {summary.objects} "
            f"object(s); masks in {output_dir}{note})")


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dino_core.eval.davis_data import open_davis
    from dino_core.eval.davis_metrics import summarise
    from dino_core.eval.video_segmentation import PropagationConfig, segment_and_score

    cfg = PropagationConfig(args.n_last_frames, args.neighbourhood, args.topk,
                            args.temperature, args.short_side, args.size_multiple)
    sequences = open_davis(args.data, args.sequences, args.split_file, args.resolution)
    with eval_session("dino-vos", args, args.data) as s:
        scores, unscored = segment_and_score(
            s.backbone, sequences, cfg, Path(args.output_dir),
            Path(args.dump_features) if args.dump_features else None, log=True)
        if s.is_main:
            if not scores:
                print(f"dino-vos: {len(unscored)} sequence(s) segmented, none scored (only "
                      f"first frames are annotated); masks in {args.output_dir}")
            else:
                print(format_summary(summarise(scores), args.output_dir, unscored))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-vos", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
