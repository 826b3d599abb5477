"""``dino-knn``: weighted k-NN accuracy of a pretrained backbone on a train/val split."""
from __future__ import annotations

import argparse
import sys

from .eval_common import (CHECKPOINT_HELP, add_checkpoint_args, add_data_arg, add_device_arg,
                          resolve_eval_data, run_cli)
from .eval_session import eval_session

DESCRIPTION = """\
Weighted k-NN classification on frozen features, the DINO paper's k-NN protocol.

Every image of DATA/train and DATA/val goes through Resize(256, bicubic) + CenterCrop(224) +
ImageNet normalisation; its feature is the CLS output of the backbone (the teacher of a
training checkpoint), L2-normalised. Each val image takes the k most cosine-similar train
images, and each votes for its class with weight exp(similarity / T). Prints top-1 and top-5
accuracy for every k. Without --data, the embedded default dataset is used.
"""

EPILOG = CHECKPOINT_HELP + """

choosing k and T:
  The paper reports k=20 as usually best, with T=0.07; k larger than the train set is clipped
  to its size (the output says so). Accuracy in percent.

scale:
  Features stay on the CPU; the train bank streams to the device in --bank-chunk rows (once)
  and val rows are scored --query-chunk at a time, so an ImageNet bank (1.28M x 384) never
  needs to fit on the GPU. Lower both if the device runs out of memory.

several GPUs / nodes:
  torchrun --nproc-per-node 8 -m dino_core.cli.knn --checkpoint CKPT --data /data/imagenet
  Each rank extracts its share of both splits; the features are gathered and rank 0 prints.

reusing features:
  --dump-features DIR writes trainfeat.pth, trainlabels.pth, testfeat.pth, testlabels.pth
  (the reference code's names); --load-features DIR skips extraction (no checkpoint needed),
  e.g. to try other k or T.

examples:
  dino-knn --checkpoint runs/quick/checkpoint.pth
  dino-knn --checkpoint dino_deitsmall16_pretrain.pth --data /data/imagenet --batch-size 256
  dino-knn --load-features feats/ --nb-knn 20 --temperature 0.05
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dino-knn", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, required=False)
    a = p.add_argument
    add_data_arg(p)
    a("--batch-size", type=int, default=64, help="images per extraction batch per rank")
    a("--num-workers", type=int, default=2, help="image decoding workers per rank")
    add_device_arg(p)
    a("--nb-knn", type=int, nargs="+", default=[10, 20, 100, 200], metavar="K",
      help="numbers of neighbours to evaluate (default: 10 20 100 200)")
    a("--temperature", type=float, default=0.07, help="T in exp(sim / T) (default: 0.07)")
    a("--dump-features", metavar="DIR", help="save the extracted features here")
    a("--load-features", metavar="DIR", help="use features saved by --dump-features")
    a("--query-chunk", type=int, default=1024, help="val rows scored at once")
    a("--bank-chunk", type=int, default=1 << 17, help="train rows moved to the device at once")
    return p


def format_results(results: dict, temperature: float) -> str:
    """The accuracy table printed by dino-knn."""
    lines = [f"weighted k-NN (T={temperature:g}):", "      k    top-1    top-5"]
    for k, top1 in results["top1"].items():
        used = int(results["k_used"][k])
        note = f"   (k clipped to the {used} train images)" if used < k else ""
        lines.append(f"  {k:5d}  {top1:7.2f}  {results['top5'][k]:7.2f}{note}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from dino_core.eval.features import load_features
    from dino_core.eval.knn import knn_accuracy, knn_classify
    from dino_core.train.run import resolve_device

    if min(args.nb_knn) < 1 or args.temperature <= 0:
        raise ValueError("--nb-knn values must be >= 1 and --temperature > 0")
    chunks = dict(query_chunk=args.query_chunk, bank_chunk=args.bank_chunk)
    if args.load_features:
        device = resolve_device(args.device)
        train, val = load_features(args.load_features)
        print(f"dino-knn: {len(train.labels)} train / {len(val.labels)} val features "
              f"from {args.load_features}")
        results = knn_classify(train, val, args.nb_knn, args.temperature, device, **chunks)
        print(format_results(results, args.temperature))
        return 0
    with eval_session("dino-knn", args, args.data or "the embedded dataset") as s:
        data = resolve_eval_data(args.data)
        results = knn_accuracy(s.backbone, data, s.device, args.batch_size, args.nb_knn,
                               args.temperature, args.num_workers, args.dump_features, **chunks)
        if s.is_main:
            if args.dump_features:
                print(f"dino-knn: features written to {args.dump_features}")
            print(format_results(results, args.temperature))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-knn", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
