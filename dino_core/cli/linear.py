"""``dino-linear``: linear probe on the frozen features of a pretrained backbone."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .eval_common import (CHECKPOINT_HELP, add_checkpoint_args, add_data_arg, add_device_arg,
                          load_cli_backbone, resolve_eval_data, run_cli)

DESCRIPTION = """\
Train a linear classifier on frozen backbone features (the DINO linear evaluation).

The backbone never changes. Features: for ViT-T/S the CLS tokens of the last 4 blocks,
concatenated; for ViT-B/L the last block's CLS with the mean of its patch tokens. Training
images get a random resized crop (scale 0.08-1, bicubic, 224) and a horizontal flip; val images
Resize(256) + CenterCrop(224). SGD (momentum 0.9, weight decay 0) with a cosine schedule;
top-1 / top-5 on DATA/val after every epoch.
"""

EPILOG = CHECKPOINT_HELP + """

tuning:
  The learning rate is given per 256 images and scaled by --batch-size / 256. The reference
  default is 0.001 for 100 epochs; a sweep over lr (1e-4 ... 1e-1) is how the paper's numbers
  were obtained. Accuracy keeps rising slowly to 100 epochs.

checkpoints:
  OUTPUT_DIR/linear.pth (classifier, optimizer, epoch, best accuracy), rewritten atomically
  after every epoch; running the same command again resumes. --evaluate only evaluates it.
  The probe runs in one process (one GPU or the CPU).

examples:
  dino-linear --checkpoint runs/quick/checkpoint.pth --output-dir runs/quick/linear --epochs 20
  dino-linear --checkpoint dino_vitbase16_pretrain.pth --data /data/imagenet --output-dir lin \\
      --batch-size 256 --lr 0.001
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dino-linear", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    a = p.add_argument
    add_data_arg(p)
    a("--output-dir", required=True, help="where linear.pth goes (and is resumed from)")
    a("--epochs", type=int, default=100)
    a("--lr", type=float, default=0.001, help="learning rate per 256 images")
    a("--batch-size", type=int, default=128)
    a("--n-last-blocks", type=int, help="CLS tokens of this many last blocks (default by arch)")
    a("--avgpool", action=argparse.BooleanOptionalAction, default=None,
      help="append the mean patch token of the last block (default: on for base/large)")
    a("--num-workers", type=int, default=2)
    a("--seed", type=int, default=0)
    add_device_arg(p)
    a("--evaluate", action="store_true", help="only evaluate OUTPUT_DIR/linear.pth on val")
    return p


def _loaders(args, train_ds, val_ds, device):
    import torch
    from torch.utils.data import DataLoader

    def train_images(epoch: int):
        train_ds.set_epoch(epoch)
        order = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        return DataLoader(train_ds, args.batch_size, shuffle=True, generator=order,
                          num_workers=args.num_workers, pin_memory=device.type == "cuda")

    def val_images():
        return DataLoader(val_ds, args.batch_size, num_workers=args.num_workers,
                          pin_memory=device.type == "cuda")

    return train_images, val_images


def _run(args: argparse.Namespace) -> int:
    import torch

    from dino_core.parallel.env import detect_env
    from dino_core.eval.datasets import ProbeTrainFolder, open_eval_splits
    from dino_core.eval.linear import (LinearClassifier, LinearProbeConfig,
                                       evaluate_classifier, probe_features, probe_recipe,
                                       train_linear)
    from dino_core.train.run import resolve_device

    if detect_env().distributed:
        raise ValueError("dino-linear runs in one process; launch it without torchrun/srun")
    config = LinearProbeConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               num_workers=args.num_workers, seed=args.seed)
    device = resolve_device(args.device)
    backbone, ck = load_cli_backbone(args, device)
    n_blocks, avgpool = probe_recipe(ck.arch)
    n_blocks = args.n_last_blocks or n_blocks
    avgpool = avgpool if args.avgpool is None else args.avgpool
    data = resolve_eval_data(args.data)
    _, val_ds, classes = open_eval_splits(data)
    train_ds = ProbeTrainFolder(data / "train", scale=config.crop_scale, seed=args.seed)
    dim = backbone.embed_dim * (n_blocks + int(avgpool))
    classifier = LinearClassifier(dim, len(classes)).to(device)
    train_images, val_images = _loaders(args, train_ds, val_ds, device)

    def featurise(loader):
        for images, labels in loader:
            with torch.no_grad():
                feats = probe_features(backbone, images.to(device, non_blocking=True),
                                       n_blocks, avgpool)
            yield feats, labels.to(device, non_blocking=True)

    path = Path(args.output_dir) / "linear.pth"
    print(f"dino-linear: {ck.name} from {ck.source}, {n_blocks} block(s)"
          f"{' + avgpool' if avgpool else ''} -> {dim} features, {len(classes)} classes, "
          f"{len(train_ds)} train / {len(val_ds)} val images, device {device}")
    if args.evaluate:
        from dino_core.formats.files import load_checkpoint, load_state
        load_state(classifier, load_checkpoint(path)["classifier"], "the linear classifier", path)
        metrics = evaluate_classifier(classifier, featurise(val_images()))
    else:
        metrics = train_linear(classifier, lambda e: featurise(train_images(e)),
                               len(train_images(0)), config, lambda: featurise(val_images()),
                               path, extra={"backbone": ck.source, "arch": ck.arch,
                                            "n_last_blocks": n_blocks, "avgpool": avgpool,
                                            "classes": classes})
    print(f"dino-linear: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%"
          + ("" if args.evaluate else f"  (best, epoch {int(metrics['epoch'])})"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("dino-linear", build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
