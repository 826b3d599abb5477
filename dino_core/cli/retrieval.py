"""``dino-retrieval``: revisited Oxford / Paris image retrieval, mAP medium and hard."""
from __future__ import annotations

import argparse
import sys

from .eval_common import CHECKPOINT_HELP, add_device_arg, run_cli
from .eval_session import add_dump_args, eval_session, protocol_parser

DESCRIPTION = """\
Landmark image retrieval on revisited Oxford (roxford5k) or Paris (rparis6k), the DINO
paper's protocol: frozen features, no training, nearest neighbours.

Every image is shrunk so its longer side is at most --image-size (aspect kept); its feature is
the CLS output of the last block, averaged over --scales (each a bilinear resize of the
image; default 1, 1/sqrt(2), 1/2) and L2-normalised. The database is ranked by cosine
similarity to each query and scored with our implementation of the revisited protocol's
mean average precision: "medium" counts easy and hard images as positives and ignores junk,
"hard" counts hard images only and ignores junk and easy ones. Prints one summary line.
"""

EPILOG = CHECKPOINT_HELP + """

data:
  ROOT/<dataset>/jpg/*.jpg and ROOT/<dataset>/gnd_<dataset>.pkl, as the revisitop scripts
  lay them out (https://github.com/filipradenovic/revisitop; download them yourself,
  nothing is downloaded by this command). A gnd_<dataset>.json with the same fields is read
  too. The pickle is read without running code: only lists, dicts, numbers, strings and
  numpy arrays are accepted.

the paper's settings (upstream DINO's commands):
  Oxford: --image-size 224 --scales 1       Paris: --image-size 512 (multi-scale, default)
  Upstream feeds whole query images; --crop-queries crops them to their bounding box first,
  as the revisited protocol defines queries (usually a little better).

several GPUs / nodes:
  torchrun --nproc-per-node 8 -m dino_core.cli.retrieval --checkpoint CKPT --data ROOT
  Each rank describes its share of the images; the features are gathered; rank 0 prints.

reusing features:
  --dump-features DIR writes <dataset>_query.pth and <dataset>_database.pth (plain [N, D]
  tensors); --load-features DIR scores them again (the ground truth is still read).

examples:
  dino-retrieval --checkpoint dino_vitsmall16_googlelandmark_pretrain.pth --data /data/revisitop \\
      --dataset rparis6k --image-size 512
  dino-retrieval --checkpoint runs/vits16/checkpoint.pth --data /data/revisitop \\
      --dataset roxford5k --image-size 224 --scales 1
"""


def build_parser() -> argparse.ArgumentParser:
    from dino_core.eval.retrieval import SCALES

    p = protocol_parser("dino-retrieval", DESCRIPTION, EPILOG)
    a = p.add_argument
    a("--data", required=True, metavar="ROOT", help="folder holding <dataset>/ (see 'data')")
    a("--dataset", default="roxford5k",
      help="roxford5k | rparis6k | any folder name laid out alike (default: roxford5k)")
    a("--image-size", type=int, default=224,
      help="longer side at most this many pixels (default: 224)")
    a("--scales", type=float, nargs="+", default=list(SCALES), metavar="S",
      help="image scales whose features are averaged (default: 1 0.7071 0.5; 1 = single)")
    a("--crop-queries", action="store_true", help="crop queries to their ground-truth box")
    a("--num-workers", type=int, default=2, help="image decoding workers per rank")
    add_device_arg(p)
    add_dump_args(p, "<dataset>_query.pth, <dataset>_database.pth")
    return p


def format_summary(name: str, maps: dict[str, float], n_queries: int, n_images: int) -> str:
    return (f"dino-retrieval: {name} mAP medium {maps['medium']:.1f} hard {maps['hard']:.1f} "
            f"({n_queries} queries, {n_images} database images)")


def _run(args: argparse.Namespace) -> int:
    from dino_core.eval.features import load_tensors
    from dino_core.eval.retrieval import evaluate_retrieval, open_revisited, retrieval_map

    if args.image_size < 1 or not args.scales or min(args.scales) <= 0:
        raise ValueError("--image-size must be >= 1 and every --scales value > 0")
    bench = open_revisited(args.data, args.dataset)
    if args.load_features:
        names = [f"{bench.name}_query", f"{bench.name}_database"]
        feats = load_tensors(args.load_features, names)
        maps = retrieval_map(feats[names[0]], feats[names[1]], bench)
        print(format_summary(bench.name, maps, len(bench.queries), len(bench.images)))
        return 0
    with eval_session("dino-retrieval", args, f"{args.data}/{args.dataset}") as s:
        maps = evaluate_retrieval(s.backbone, bench, s.device, args.image_size, args.scales,
                                  args.crop_queries, args.num_workers, args.dump_features)
        if s.is_main:
            if args.dump_features:
                print(f"dino-retrieval: features written to {args.dump_features}")
            print(format_summary(bench.name, maps, len(bench.queries), len(bench.images)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-retrieval", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
