"""``dino-bench``: the project's benchmarks, one sub-command each, one harness for all.

Every sub-command writes ``<machine>_<yyyymm>_<what>.{json,csv,md,png}`` and tensorboard
scalars under ``--output-dir`` (default: ``benchmarks/results``) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import torch

from .commands import COMMANDS, QUICK_CONVERT_IMAGES, WRITTEN
from .harness.report import render_markdown
from .harness.timing import resolve_device, write_results

RESULTS_DIR = Path(__file__).resolve().parent / "results"

DESCRIPTION = """\
Measure how fast DINO trains here, and where the time goes. Every figure is a median over
repeated timings after warm-up, with its spread; every comparison is a ratio against a
baseline measured in the same run (machines are shared and noisy: never compare absolute
numbers across runs). Results name the machine, date, command line and baseline."""

# What each sub-command measures and how to read it: shown in --help and in each sub-help.
HELP = {
    "patch": "images/s against patch size (16, 14, 8) for ViT-S and ViT-B: backbone "
             "forward at 224 px (the DINO paper's inference column; its V100 figures are "
             "shown next to ours) and the full DINO train step with multi-crop; MFU against "
             "the device peak; peak memory. Read: the train column is what a GPU-hour buys; "
             "MFU says how much of the hardware the step uses (goal on H200: >= 30% for "
             "ViT-S/16).",
    "pipeline": "multi-crop images/s of each loader backend (reference, dali, ffcv), and "
                "images per CPU core-second, next to the reference PIL executor in the same "
                "run, on the ImageNet-like benchmark corpus (built once, cached). Read: "
                "speedup_per_core (goal >= 4x on CPU) and whether images/s exceeds what the "
                "train step consumes (see patch).",
    "loss": "DINO loss forward+backward time and peak extra memory per implementation "
            "(reference pair loop, fused, cuda) at 12 views, K=65536. Read: the ratios to "
            "the reference row (goal on CPU: >= 3x faster, >= 5x less memory).",
    "step": "one training step's images/s and MFU next to a recreated reference step "
            "(pair-loop loss, Python EMA loop, per-tensor host syncs). Read: the ratio "
            "(goal >= 2x on the same GPU). With --parallel ddp,fsdp: the step under each "
            "strategy on every GPU (CPU: 2 gloo ranks), images/s and memory per rank side "
            "by side (--activation-checkpointing adds those rows).",
    "e2e": "a real training run through a backend next to the same run fed by the "
           "reference executor, on the ImageNet-like corpus: training images/s, the share of "
           "step time spent waiting for data, CPU cores busy. Read: data_wait_share (goal <= "
           "2% on a GPU with ViT-S/16).",
    "feed": "CPU time per image of the DALI executor's host feed (the external-source "
            "callback: read bytes, JPEG sizes, draw and pack every view's parameters), next "
            "to the same callback drawing per sample in Python; DALI's own decode and "
            "augmentation are not included. Read: cores_for_8000, the cores the feed alone "
            "needs at the GPU goal of 8,000 images/s (want well under 1).",
    "convert": "dino-convert --format ffcv and --format wds next to FFCV's own DatasetWriter "
               "(RGBImageField jpg, same max side 500 and quality 90, same workers) on the "
               "ImageNet-like corpus, at 1 and 2 workers, in one run. Read: speedup_per_core "
               "(goals: ffcv >= 1.5x, wds >= 3x), process_speedup (whole processes, start "
               "to exit; goal >= 3x) and scaling (near the worker ratio). --images N: the "
               "scale check (peak memory and images/s at 10k vs N images, flat within 10%) "
               "and an ImageNet-1k time projection.",
    "stages": "where the FFCV CPU executor's time goes: ms per image of decode, parameter "
              "draw, crop+resize per view size, each photometric op and the loader's copy, "
              "on one core, next to each stage's floor (libjpeg-turbo alone, one resize "
              "pass, one memory pass per view). Read: x_floor per stage.",
    "photometric": "the fused photometric kernel on one multi-crop batch (64 images x (2 x "
                   "224 + 10 x 96) uint8 crops -> normalised bf16) under CUDA-graph capture, "
                   "with GB/s against the bytes it must move, next to the torch ops. Read: "
                   "time_median_ms (goal on H200: <= 0.1 ms) and gbps_design against the "
                   "device copy row. Without a GPU: a CPU smoke test (host twin, numba).",
}


def _epilog() -> str:
    wrap = textwrap.TextWrapper(width=88, initial_indent="", subsequent_indent=" " * 12)
    lines = ["sub-commands:"] + [wrap.fill(f"  {name:<9} {text}") for name, text in HELP.items()]
    return "\n".join(lines) + """

--quick runs a CPU-sized version of any sub-command in seconds to a minute (ViT-tiny,
small inputs, few iterations): a smoke test of the harness, not a measurement to quote.

examples:
  dino-bench patch --quick
  dino-bench pipeline --backends reference dali ffcv --seconds 10 --time-budget 60
  dino-bench pipeline --backends reference ffcv --data /data/imagenet/train
  dino-bench e2e --backends dali ffcv --seconds 60
  dino-bench feed --data /data/imagenet-wds/train
  dino-bench photometric
  dino-bench gpu /tmp/gpu-check      # every GPU part, time-boxed, one summary (--help)
"""


# ----------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized run (ViT-tiny, small inputs, few iterations): a smoke test")
    p.add_argument("--device", default="auto",
                   help="auto (cuda when present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                   help="where result files go (default: benchmarks/results)")
    p.add_argument("--no-tensorboard", action="store_true", help="skip tensorboard scalars")
    p.add_argument("--threads", type=int,
                   help="torch intra-op CPU threads (default: torch's choice). On a shared "
                   "machine, fewer threads than busy cores avoids OpenMP stalls")


def _precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision of the model (default auto: bf16 on GPU, fp32 on CPU)")


def _recipes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", nargs="+", choices=("dino", "dinov2"),
                   help="training recipes to measure, each a column value (default both: "
                   "dino dinov2)")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help="loader backends to measure (reference, dali, ffcv); the reference "
                   "executor always runs first as the baseline")
    p.add_argument("--data", help="your own ImageFolder tree, e.g. ImageNet's train folder "
                   "(default: the ImageNet-like benchmark corpus, built once and cached)")
    p.add_argument("--corpus", choices=("imagenet-like", "embedded"), default="imagenet-like",
                   help="without --data: imagenet-like (default; median 500x375, ~110 KB, "
                   "the data that counts) or embedded (the small embedded photos: flattering, "
                   "labelled as such in the results)")
    p.add_argument("--corpus-dir", help="cache folder of the corpus and its conversions "
                   "(default $DINO_FAST_CACHE or ~/.cache/dino-fast)")
    p.add_argument("--corpus-images", type=int, help="images in the corpus (default 8192; "
                   "quick 1024); epochs are cycled")
    p.add_argument("--backend-data", action="append", metavar="BACKEND=PATH",
                   help="a backend's own copy of the data, e.g. ffcv=/data/train.beton "
                   "(repeatable; otherwise the corpus's cached conversions, or for --data a "
                   "temporary .beton for ffcv)")
    p.add_argument("--batch-size", type=int, help="images per batch (multi-crop samples)")
    p.add_argument("--workers", type=int, help="loader worker processes / threads")
    p.add_argument("--local-crops", type=int, help="local views per image (recipe: 10)")
    p.add_argument("--seconds", type=float, help="time each backend at least this long after "
                   "warm-up (default on CUDA: pipeline 10, e2e 40; CPU: count only)")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="kill a backend's run after S seconds in all (start-up included) and "
                   "report it as failed; the others still run (default on CUDA: pipeline 60 + "
                   "warm-up + seconds, e2e 60 + seconds; CPU: no limit)")
    p.add_argument("--in-process", action="store_true",
                   help="run every backend in this process (debugging: a crash or hang then "
                   "takes the whole run down)")


def _folder_options(p: argparse.ArgumentParser) -> None:
    """Where convert and stages read: the user's ImageFolder or the corpus."""
    p.add_argument("--data", help="your own ImageFolder (default: the ImageNet-like corpus)")
    p.add_argument("--corpus-dir", help="cache folder of the corpus (default $DINO_FAST_CACHE "
                   "or ~/.cache/dino-fast)")
    p.add_argument("--corpus-images", type=int, help="images in the corpus (default 8192; "
                   f"quick {QUICK_CONVERT_IMAGES})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino-bench", description=DESCRIPTION, epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("patch", help="throughput and MFU against patch size per architecture",
                       description=HELP["patch"])
    _common(p)
    p.add_argument("--archs", nargs="+", help="e.g. vit_small vit_base (quick: vit_tiny)")
    p.add_argument("--patches", nargs="+", type=int, help="patch sizes (default 16 14 8)")
    p.add_argument("--batch", type=int, help="train-step batch (images, each with all crops)")
    p.add_argument("--infer-batch", type=int, help="forward-only batch")
    p.add_argument("--iters", type=int, help="timed iterations per measurement (at most)")
    p.add_argument("--seconds", type=float, help="timed seconds per measurement (default 3)")
    p.add_argument("--warmup", type=int, help="untimed warm-up iterations")
    p.add_argument("--out-dim", type=int, help="DINO head prototypes K (65536; quick 4096)")
    p.add_argument("--no-train", action="store_true", help="forward-only, skip the train step")
    _precision(p)

    p = sub.add_parser("pipeline", help="multi-crop loader images/s per backend and per core",
                       description=HELP["pipeline"])
    _common(p)
    _data_options(p)
    p.add_argument("--batches", type=int, help="timed batches per backend (at least)")
    p.add_argument("--warmup-batches", type=int, help="untimed batches first (at least)")
    p.add_argument("--warmup-seconds", type=float,
                   help="untimed seconds first (at least; default on CUDA 3)")

    from .data.convert import ConvertBenchConfig
    p = sub.add_parser("convert", help="dino-convert vs FFCV's writer, images/s per core",
                       description=HELP["convert"])
    _common(p)
    _folder_options(p)
    c = ConvertBenchConfig()
    p.add_argument("--workers", type=int, nargs="+", help="worker counts to measure (default "
                   f"{' '.join(map(str, c.workers))}); scaling is against the first")
    p.add_argument("--max-side", type=int, help=f"longer-side limit (default {c.max_side})")
    p.add_argument("--quality", type=int, help=f"JPEG quality (default {c.quality})")
    p.add_argument("--repeats", type=int, help=f"runs per converter, median reported "
                   f"(default {c.repeats})")
    p.add_argument("--scratch", help="folder for the outputs (default: the system temp folder)")
    p.add_argument("--no-verify", action="store_true", help="do not time --verify")
    p.add_argument("--images", type=int, help="scale check instead: convert the corpus "
                   "replicated to --scale-base and to this many images (whole processes), "
                   "peak memory and images/s of both, and an ImageNet-1k time projection")
    p.add_argument("--scale-base", type=int, default=10_000, help="the scale check's "
                   "reference size (default 10000)")
    p.add_argument("--in-process-only", action="store_true", help="do not also time each "
                   "converter as a process of its own (start to exit)")

    from .data.stages import StagesBenchConfig
    p = sub.add_parser("stages", help="FFCV CPU executor: ms per image by stage vs floors",
                       description=HELP["stages"])
    _common(p)
    _folder_options(p)
    s = StagesBenchConfig()
    p.add_argument("--images", type=int, help=f"images timed, in memory (default {s.images})")
    p.add_argument("--repeats", type=int, help=f"passes per figure, best reported "
                   f"(default {s.repeats})")
    p.add_argument("--local-crops", type=int, help=f"local views (default {s.local_crops})")

    p = sub.add_parser("loss", help="DINO loss time and memory per implementation",
                       description=HELP["loss"])
    _common(p)
    p.add_argument("--batch", type=int, help="per-view batch (default 32 CPU, 64 GPU; quick 4)")
    p.add_argument("--views", type=int, default=12, help="student views (default 12)")
    p.add_argument("--out-dim", type=int, help="prototypes K (default 65536; quick 4096)")
    p.add_argument("--iters", type=int, help="timed calls per implementation (default 200 "
                   "graph replays on GPU, 20 on CPU; quick 4)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"),
                   help="logits dtype (default bf16 on GPU, float32 on CPU)")

    p = sub.add_parser("step", help="training-step images/s and MFU vs the reference step",
                       description=HELP["step"])
    _common(p)
    p.add_argument("--archs", nargs="+", help="architectures (default vit_small vit_base on "
                   "GPU, vit_tiny on CPU)")
    p.add_argument("--patch", type=int, help="patch size (default 16)")
    p.add_argument("--batch", type=int, help="images per step")
    p.add_argument("--iters", type=int, help="timed iterations (with --seconds: at most)")
    p.add_argument("--seconds", type=float, help="timed seconds per measurement (GPU default 5)")
    p.add_argument("--compile", action="store_true",
                   help="add an ours+compile row (backbones through torch.compile)")
    p.add_argument("--parallel", metavar="ddp,fsdp",
                   help="instead: our step under each of these strategies on several ranks "
                   "(benchmarks/model/parallel_step.py)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="with --parallel: also each strategy with activation checkpointing")
    p.add_argument("--world-size", type=int,
                   help="with --parallel: ranks (default every GPU; 2 on the CPU)")
    _recipes(p)
    _precision(p)

    p = sub.add_parser("e2e", help="short real training run: images/s and data-wait share",
                       description=HELP["e2e"])
    _common(p)
    _data_options(p)
    p.add_argument("--arch", help="architecture (default vit_small; quick vit_tiny)")
    p.add_argument("--patch", type=int, help="patch size dividing 224 and 96 (default 16)")
    p.add_argument("--steps", type=int, help="timed training steps")
    p.add_argument("--warmup-steps", type=int, help="untimed steps first")
    p.add_argument("--out-dim", type=int, help="DINO head prototypes K")
    p.add_argument("--engine", choices=("trainer", "loop"),
                   help="trainer (default): dino_core.train.train and its own accounting; "
                   "loop: loader + step with warm-up excluded and, on a GPU, the stream's idle "
                   "time from CUDA events")
    _recipes(p)
    _precision(p)

    p = sub.add_parser("feed", help="CPU time per image of the DALI host feed",
                       description=HELP["feed"])
    _common(p)
    p.add_argument("--data", help="ImageFolder tree or dino-convert --format wds folder "
                   "(default: the embedded dataset's train split)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 64; quick 8)")
    p.add_argument("--local-crops", type=int, help="local views per image (recipe: 10)")
    p.add_argument("--batches", type=int, help="timed batches per variant and round")
    p.add_argument("--warmup-batches", type=int, help="untimed batches per variant first")
    p.add_argument("--rounds", type=int, help="timing rounds (median and IQR over them)")
    p.add_argument("--no-parts", action="store_true",
                   help="only the two whole callbacks, not read / draw / pack alone")

    p = sub.add_parser("photometric", help="fused photometric kernel on one multi-crop batch",
                       description=HELP["photometric"])
    _common(p)
    p.add_argument("--images", type=int, help="images per batch (default 64; quick 2)")
    p.add_argument("--local-crops", type=int, help="local views per image (recipe: 10)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="output dtype (default bfloat16)")
    p.add_argument("--iters", type=int, help="timed graph replays (GPU) or calls (CPU)")
    p.add_argument("--warmup", type=int, help="untimed replays / calls first")
    p.add_argument("--reps", type=int, help="calls captured per CUDA graph (default 10)")
    # listed for --help only: ``main`` hands ``dino-bench gpu ...`` to its own parser
    sub.add_parser("gpu", add_help=False,
                   help="every GPU check and benchmark, time-boxed, one summary "
                        "(dino-bench gpu --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dino-bench``; returns the process exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["gpu"]:  # its own parser: parts, time boxes, one summary
        from .gpu.check import main as gpu_main
        return gpu_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.threads is not None:
        if args.threads < 1:
            print(f"dino-bench: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as err:
        print(f"dino-bench: {err}", file=sys.stderr)
        return 2
    result, plot_spec = COMMANDS[args.command](args, device, ["dino-bench"] + args_list)
    if plot_spec is WRITTEN:
        print(render_markdown(result, None))
        print(f"wrote {Path(args.output_dir) / result.stem}.*")
        return 0
    paths = write_results(result, args.output_dir, plot_spec, tensorboard=not args.no_tensorboard)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
