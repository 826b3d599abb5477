"""``dino-copydetect``: copy detection on Copydays (strong subset), mAP."""
from __future__ import annotations

import argparse
import sys

from .eval_common import CHECKPOINT_HELP, add_device_arg, run_cli
from .eval_session import add_dump_args, eval_session, protocol_parser

DESCRIPTION = """\
Copy detection on Copydays, the DINO paper's protocol: find the original photo of each
"strong" attack (print-and-scan, painting, heavy crops and edits) among the originals and,
optionally, many distractor images.

Every image is resized to --image-size x --image-size (bicubic). Its descriptor is the last
block's CLS token concatenated with the GeM pooling (p = 4) of the last block's patch tokens.
A PCA whitening is learned on the descriptors of a separate image folder (--whitening-data),
applied to queries and database, and the results are L2-normalised; the database (originals
+ --distractors) is ranked by cosine similarity. A query's positives are the originals
whose file names start with the same four characters (Copydays' group number). Average
precision over the first --top results, our implementation of the Holidays/Copydays
measure; prints one summary line with the mAP over the strong queries.
"""

EPILOG = CHECKPOINT_HELP + """

data:
  COPYDAYS/original/*.jpg (157 originals) and COPYDAYS/strong/*.jpg (229 attacks), as
  distributed by INRIA (download them yourself; nothing is downloaded by this command).
  --distractors DIR and --whitening-data DIR: folders of images (the paper: 10k and 20k
  different random YFCC100M images). Without --whitening-data the descriptors are not
  whitened (the paper whitens); without --distractors the database is the 157 originals.

the paper's settings:
  --image-size 320 (224 also reported), ViT-B/8 (85.5 mAP in the paper; upstream's README
  prints 0.858 for its released weights), --top 20 as upstream's evaluation cuts it.
  --whitening-dim keeps the strongest directions only (default: all 2D); it must stay below
  the number of whitening images (a covariance of N images spans at most N - 1 directions).

several GPUs / nodes:
  torchrun --nproc-per-node 8 -m dino_core.cli.copydetect --checkpoint CKPT --data COPYDAYS
  Each rank describes its share of every image set; the descriptors are gathered.

reusing features:
  --dump-features DIR writes copydays_queries.pth, copydays_database.pth (originals first,
  then distractors) and copydays_whitening.pth, raw descriptors [N, 2D];
  --load-features DIR scores them again (--data is still read for the file names).

example:
  dino-copydetect --checkpoint dino_vitbase8_pretrain.pth --data /data/copydays \\
      --distractors /data/yfcc_10k --whitening-data /data/yfcc_20k
"""


def build_parser() -> argparse.ArgumentParser:
    from dino_core.eval.copy_detection import TOP

    p = protocol_parser("dino-copydetect", DESCRIPTION, EPILOG)
    a = p.add_argument
    a("--data", required=True, metavar="COPYDAYS", help="folder with original/ and strong/")
    a("--distractors", metavar="DIR", help="images added to the database")
    a("--whitening-data", metavar="DIR", help="images the whitening is learned on")
    a("--whitening-dim", type=int, help="directions kept by the whitening (default: all)")
    a("--image-size", type=int, default=320, help="square input size (default: 320)")
    a("--top", type=int, default=TOP,
      help=f"results searched per query; 0 = the whole ranking (default: {TOP})")
    a("--batch-size", type=int, default=16, help="images per extraction batch per rank")
    a("--num-workers", type=int, default=2, help="image decoding workers per rank")
    add_device_arg(p)
    add_dump_args(p, "copydays_queries.pth, copydays_database.pth, copydays_whitening.pth")
    return p


def format_summary(result) -> str:
    whitening = (f"whitening learned on {result.whitening_images} images"
                 if result.whitening_images else "no whitening")
    return (f"dino-copydetect: strong mAP {result.strong_map:.1f} ({result.queries} queries; "
            f"database {result.originals} originals + {result.distractors} distractors; "
            f"{whitening})")


def _from_dump(args: argparse.Namespace, data):
    from dino_core.eval.copy_detection import CopyDetectionResult, copy_detection_map
    from dino_core.eval.features import load_tensors

    names = ["copydays_queries", "copydays_database"]
    feats = load_tensors(args.load_features, names)
    whit = None
    if args.whitening_data:
        whit = load_tensors(args.load_features, ["copydays_whitening"])["copydays_whitening"]
    queries, database = feats[names[0]], feats[names[1]]
    if queries.shape[0] != len(data.queries) or database.shape[0] < len(data.originals):
        raise ValueError(f"features in {args.load_features} ({queries.shape[0]} queries, "
                         f"{database.shape[0]} database rows) do not match {args.data} "
                         f"({len(data.queries)} strong images, {len(data.originals)} originals)")
    mean_ap = copy_detection_map(queries, database, data.positives, whit, args.whitening_dim,
                                 args.top or None)
    return CopyDetectionResult(mean_ap, len(data.queries), len(data.originals),
                               database.shape[0] - len(data.originals),
                               0 if whit is None else whit.shape[0])


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dino_core.eval.copy_detection import evaluate_copy_detection, list_images, open_copydays

    if args.image_size < 1 or args.top < 0 or args.batch_size < 1:
        raise ValueError("--image-size and --batch-size must be >= 1 and --top >= 0")
    data = open_copydays(args.data)
    if args.load_features:
        print(format_summary(_from_dump(args, data)))
        return 0
    distractors = list_images(Path(args.distractors), "distractor") if args.distractors else []
    whitening = (list_images(Path(args.whitening_data), "whitening")
                 if args.whitening_data else [])
    with eval_session("dino-copydetect", args, args.data) as s:
        result = evaluate_copy_detection(
            s.backbone, data, s.device, distractors, whitening, args.image_size,
            args.batch_size, args.num_workers, args.whitening_dim, args.top or None,
            args.dump_features)
        if s.is_main:
            if args.dump_features:
                print(f"dino-copydetect: features written to {args.dump_features}")
            print(format_summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-copydetect", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
