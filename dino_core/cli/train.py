"""``dino-train``: pretrain a ViT with DINO on one CPU, one GPU, or many nodes."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
Pretrain a Vision Transformer with DINO (self-distillation with no labels).

Without --data it trains on the embedded default dataset: real photos shipped inside
scikit-image and scikit-learn, cut into a labelled train/val split (built once, cached),
so that the k-NN accuracy printed at the end means something.
"""

EPILOG = """\
configuration:
  Defaults are the paper's recipe for ViT-S/16 on ImageNet (lr 5e-4 per 256 images, cosine,
  10 warm-up epochs, wd 0.04 -> 0.4, teacher momentum 0.996 -> 1, clip 3.0, 2x224 + 10x96
  crops, K=65536). Layers of precedence: defaults < --config FILE < options < --set.
  The resolved config is written to OUTPUT_DIR/config.yaml and into every checkpoint.
  --config quickstart loads the shipped CPU-sized preset (dino_core/configs/quickstart.yaml);
  --config dinov2_vits14 (vitb14, vitl14; each also _reg4, with 4 registers) DINOv2's recipe.
  A config file may start from another with `extends: NAME`; `data.aug: {preset: dinov2}`
  takes DINOv2's crops (pipelines/spec.py).

tuning, from experience with the recipe:
  * batch size: lr scales linearly with the global batch (lr * batch * world / 256).
  * collapse on small or custom data (loss flat at log K, k-NN at chance): lower
    loss.teacher_temp (0.04), or warm it up (loss.warmup_teacher_temp_epochs=30).
  * fp16 NaNs, worse at patch 8: use bf16 (default on GPU) or --precision fp32.
  * more local crops help accuracy (the paper's best runs use 10) and cost compute.
  * GPU starvation: use --backend dali (GPU decode) or ffcv (.beton) instead of reference.

resuming:
  Checkpoints are written atomically to OUTPUT_DIR/checkpoint.pth after every epoch (the one
  before it kept as checkpoint_prev.pth) and, with --checkpoint-every-min M, inside epochs.
  Running the same command again resumes from it exactly, inside the epoch if it stopped
  there; --resume CKPT starts from another file. A corrupt latest checkpoint is refused
  (one line) and the previous one used.

preemption:
  On SIGTERM or SIGUSR1 the run finishes its step, writes a checkpoint and exits with status
  143; the next start with the same --output-dir resumes mid-epoch. Under torchrun every
  rank stops at the same step. tools/slurm_dino.sbatch asks SLURM for a warning signal
  before the time limit and requeues the job.

exit status:
  0 done; 1 training diverged (last good checkpoint kept); 2 bad config, data or
  checkpoint; 130 Ctrl-C; 143 stopped by SIGTERM/SIGUSR1 after writing a checkpoint.

large models, small GPUs:
  --parallel fsdp shards every block, the teacher and the AdamW state over the ranks (ViT-L
  and up); --activation-checkpointing trades compute for activation memory; --grad-accum N
  keeps the batch (and DINO's center over it) with N times less activation memory.

multi-node:
  torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
      -m dino_core.cli.train --data /data/imagenet/train ...
  (see tools/launch_multinode.sh and tools/slurm_dino.sbatch).

examples:
  dino-train --config quickstart                      # a few minutes on a laptop CPU
  dino-train --data /data/imagenet/train --arch vit_small --batch-size 64 --epochs 100
  dino-train --data /data/imagenet-ffcv/train.beton --backend ffcv --set loss.teacher_temp=0.07
"""

# option -> dotted config key (the only place these names are mapped)
OPTION_KEYS = {
    "data": "data.path", "backend": "data.backend", "batch_size": "data.batch_size",
    "num_workers": "data.num_workers", "local_crops": "data.aug.local_crops",
    "arch": "model.arch", "patch_size": "model.patch_size", "out_dim": "model.out_dim",
    "epochs": "epochs", "lr": "optim.lr", "teacher_temp": "loss.teacher_temp",
    "output_dir": "output_dir", "device": "device", "precision": "precision", "seed": "seed",
    "max_iters_per_epoch": "max_iters_per_epoch", "compile": "model.compile",
    "init_backbone": "init_backbone", "checkpoint_every_min": "checkpoint.every_minutes",
    "keep_epoch_checkpoints": "saveckp_freq", "recipe": "recipe", "parallel": "parallel",
    "activation_checkpointing": "activation_checkpointing", "grad_accum": "grad_accum",
    "ffcv_fields": "data.ffcv_fields",
}


def build_parser() -> argparse.ArgumentParser:
    from pipelines import BACKENDS

    from ..recipes import RECIPES  # names only: no model is imported

    p = argparse.ArgumentParser(prog="dino-train", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="YAML config file, or the name of a shipped preset (quickstart, "
      "dinov2_vits14, dinov2_vits14_reg4, ... vitb14, vitl14)")
    a("--recipe", choices=tuple(RECIPES),
      help="the method: dino (default; the paper's recipe, its settings under loss.*) or "
      "dinov2 (iBOT patch loss, KoLeo, Sinkhorn-Knopp; its settings under dinov2.*, its "
      "masks under data.aug.masking)")
    a("--data", help="ImageFolder root (class folders), a .beton (ffcv) or a shard folder "
      "(dali); default: the embedded dataset")
    a("--backend", choices=tuple(BACKENDS),
      help="data pipeline: reference (PIL, CPU workers), dali (GPU decode + augment), ffcv")
    a("--ffcv-fields", metavar="IMAGE,LABEL",
      help="ffcv: the image and label fields of the .beton (default: the first RGB image "
      "field and the first int field)")
    a("--arch", choices=("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"))
    a("--patch-size", type=int, help="ViT patch size (16, 14, 8, 5 ...)")
    a("--out-dim", type=int, help="K, prototypes of the DINO head (65536 in the paper)")
    a("--epochs", type=int)
    a("--batch-size", type=int, help="images per rank per step")
    a("--local-crops", type=int, help="number of 96 px local views (paper: 8-10)")
    a("--lr", type=float, help="learning rate at a global batch of 256")
    a("--teacher-temp", type=float, help="final teacher temperature (0.04-0.07)")
    a("--num-workers", type=int, help="data loading workers per rank")
    a("--output-dir", help="where checkpoints, config.yaml, metrics.jsonl and tb/ go")
    a("--device", help="auto | cpu | cuda | cuda:N")
    a("--precision", choices=("auto", "bf16", "fp16", "fp32"),
      help="auto: bf16 on GPU, fp32 on CPU; fp16 uses a GradScaler")
    a("--seed", type=int)
    a("--compile", action="store_true", default=None,
      help="torch.compile the backbones (opt-in; compiling takes a minute or more)")
    a("--parallel", choices=("ddp", "fsdp"),
      help="ddp (default): every rank holds the whole model; fsdp: FSDP2, each rank a shard "
      "of every block, the teacher and the optimizer state (large models), sharded "
      "checkpoints (OUTPUT_DIR/checkpoint.dcp/) that resume at another world size")
    a("--activation-checkpointing", action="store_true", default=None,
      help="recompute the student's block activations in the backward (less memory, about "
      "a third more compute)")
    a("--grad-accum", type=int, metavar="N",
      help="cut each batch into N micro-batches (--batch-size / N images each), one "
      "optimizer step per batch: a large batch on a small GPU, the center over all of it")
    a("--max-iters-per-epoch", type=int, help="cap iterations per epoch (smoke tests)")
    a("--init-backbone", metavar="PATH",
      help="start student and teacher backbones from this backbone file (released DINO "
      "weights or dino-export output); the head starts fresh, schedules start at zero")
    a("--checkpoint-every-min", type=float, metavar="M",
      help="also checkpoint mid-epoch, at the first step after M minutes (0: epoch ends only)")
    a("--keep-epoch-checkpoints", type=int, metavar="N",
      help="keep OUTPUT_DIR/checkpointNNNN.pth every N epochs (0: only the latest)")
    a("--resume", metavar="CKPT", help="start from this checkpoint instead of OUTPUT_DIR's")
    a("--no-knn", action="store_true", help="skip the k-NN evaluation at the end")
    a("--no-progress", action="store_true", help="log lines instead of a progress bar")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="any config field, e.g. --set optim.warmup_epochs=5 --set data.aug.flip_p=0")
    a("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config_path(name: str | None) -> Path | None:
    if name is None:
        return None
    from ..config import PRESETS_DIR
    preset = PRESETS_DIR / f"{name}.yaml"
    return preset if (not Path(name).exists() and preset.is_file()) else Path(name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import yaml

    from pipelines.config_io import ConfigError
    from ..formats.files import CheckpointError
    from ..config import load_config
    from ..train.preemption import EXIT_PREEMPTED, Preempted
    from ..train.loop import TrainingDiverged, train

    overrides = [f"{key}={getattr(args, opt)}" for opt, key in OPTION_KEYS.items()
                 if getattr(args, opt) is not None]
    if args.no_knn:
        overrides.append("knn_eval=false")
    if args.no_progress:
        overrides.append("progress=false")
    try:
        cfg = load_config(resolve_config_path(args.config), overrides + args.set)
    except ConfigError as e:
        print(f"dino-train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    try:
        summary = train(cfg, resume_from=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"dino-train: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"dino-train: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"dino-train: {e}; run the same command again to resume (exit status "
              f"{EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("dino-train: interrupted; the last finished epoch's checkpoint is kept",
              file=sys.stderr)
        return 130
    print(f"dino-train: done. {summary['images_per_s']:.1f} images/s, "
          f"{100 * summary['data_wait_share']:.1f}% of step time waiting for data, "
          f"final loss {summary['final_loss']:.4f}")
    if "knn" in summary:
        k = summary["knn"]
        print("dino-train: weighted k-NN on the val split: " + ", ".join(
            f"k={kk} top-1 {v:.1f}%" for kk, v in k.get("top1", {}).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
