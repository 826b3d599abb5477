"""``dino-convert``: turn an image folder into FFCV or DALI format, then check the result."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .common import CHECKS, ConvertConfig

WRITERS = {"wds": "pipelines.convert.wds:convert", "ffcv": "pipelines.convert.beton:convert"}

EPILOG = """\
inputs:
  SRC/<class>/<image>      ImageFolder (ImageNet's train split): labels from the sorted
                           class folders
  SRC/<image> + --labels F a flat folder (ImageNet's val split) and a labels file: CSV of
                           filename,class or ImageNet's LOC_val_solution.csv; use
                           --classes-from TRAIN so labels are the training split's indices
  SRC/**/<image>           unlabeled (auto-detected when images lie directly in SRC, or
                           --unlabeled): label -1, the manifest says "labelled": false

formats:
  wds   WebDataset-style tar shards (<key>.jpg + <key>.cls, 9-digit keys), one DALI index per
        shard (.idx, the format of DALI's wds2idx), and manifest.json. Read it with
        `dino-train --backend dali --data DST`. Resumable: after an interruption, run the
        same command again; finished shards are kept, the rest are written.
  ffcv  one .beton (FFCV's format: RGB image field + int label) next to a manifest. Read it
        with `dino-train --backend ffcv --data DST`. Not resumable: an interrupted run
        leaves only a hidden .partial file that no reader accepts; running the same command
        again starts that file over from the first image.

How images are stored: a JPEG that is RGB, upright and no larger than --max-side is copied
byte for byte, decided from its header without decoding it; anything else (PNG, CMYK,
grayscale, alpha, palette, too large, EXIF-rotated) is decoded once, converted to RGB,
turned upright by its EXIF orientation (so every reader sees the same upright pixels),
shrunk to --max-side and re-encoded at --jpeg-quality.

Bad files (zero-byte, truncated, not an image, decompression bombs, unreadable...) are
skipped and listed in the manifest and at the end; every good image is still converted.
After converting, the output is read back with the format's own reader (FFCV's Loader,
DALI's webdataset reader) and checked: count, labels, every image decodes, checksums.
Exit status: 0; 1 with --strict when something was skipped; 2 on an error; 3 when the
verify step finds a mismatch.

examples:
  dino-convert --format wds  /data/imagenet/train /data/imagenet-wds/train --workers 16
  dino-convert --format ffcv /data/imagenet/train /data/imagenet-ffcv/train
  dino-convert --format ffcv /data/imagenet/val /data/imagenet-ffcv/val \\
      --labels LOC_val_solution.csv --classes-from /data/imagenet-ffcv/train
  dino-convert --verify /data/imagenet-ffcv/train
"""


def converter(fmt: str):
    module_name, fn_name = WRITERS[fmt].split(":")
    return getattr(importlib.import_module(module_name), fn_name)


class _Converters(dict):
    """``CONVERTERS[fmt](cfg)``: the convert function of a format, imported on first use."""

    def __missing__(self, fmt: str):
        return converter(fmt)


CONVERTERS = _Converters()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dino-convert", description="Convert an image folder to a fast training format "
        "(or, with --verify DST, check a converted one).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ConvertConfig(Path("."), Path("."))
    p.add_argument("src", type=Path, nargs="?", help="image folder")
    p.add_argument("dst", type=Path, nargs="?", help="output folder (created)")
    p.add_argument("--format", choices=sorted(WRITERS), default=d.format, help="output format")
    p.add_argument("--max-side", type=int, default=d.max_side,
                   help="re-encode images whose longer side exceeds this (default %(default)s; "
                   "ImageNet training rarely profits from more, and it keeps decode cheap)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality,
                   help="JPEG quality of re-encoded images (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="parallel worker processes (default: all cores, %(default)s)")
    p.add_argument("--shard-size", type=int, default=d.shard_size,
                   help="wds: images per tar shard (default %(default)s)")
    p.add_argument("--write-mode", choices=("raw", "jpg", "proportion"), default=d.write_mode,
                   help="ffcv: how images are stored (default %(default)s)")
    p.add_argument("--compress-probability", type=float, default=d.compress_probability,
                   help="ffcv, --write-mode proportion: share stored as JPEG")
    p.add_argument("--check", choices=CHECKS, default=d.check,
                   help="JPEGs stored as they are: judged by their header and structure "
                   "(default; the verify step decodes every stored image afterwards) or "
                   "also decoded once while converting")
    p.add_argument("--labels", type=Path, help="labels file of a flat folder: CSV "
                   "filename,class, or ImageNet's LOC_val_solution.csv")
    p.add_argument("--classes-from", type=Path, metavar="TRAIN",
                   help="take the class list (and label indices) from the training split: "
                   "its image folder, its converted output folder or its manifest.json")
    p.add_argument("--unlabeled", action="store_true",
                   help="every image below SRC at any depth, label -1 (auto-detected when "
                   "images lie directly in SRC)")
    p.add_argument("--verify", type=Path, metavar="DST", dest="verify_only",
                   help="only check the converted dataset in DST and exit")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reading the output back after converting")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> ConvertConfig | Path:
    p = build_parser()
    a = p.parse_args(argv)
    if a.verify_only is not None:
        if a.src is not None:
            p.error("--verify DST takes no SRC/DST arguments")
        return a.verify_only
    if a.src is None or a.dst is None:
        p.error("SRC and DST are required (or --verify DST)")
    if a.max_side < 16:
        p.error(f"--max-side must be >= 16, got {a.max_side}")
    if not 1 <= a.jpeg_quality <= 100:
        p.error(f"--jpeg-quality must be in 1..100, got {a.jpeg_quality}")
    if a.workers < 1 or a.shard_size < 1:
        p.error("--workers and --shard-size must be >= 1")
    if a.labels is not None and a.unlabeled:
        p.error("--labels and --unlabeled contradict each other")
    return ConvertConfig(src=a.src, dst=a.dst, format=a.format, max_side=a.max_side,
                         jpeg_quality=a.jpeg_quality, workers=a.workers,
                         shard_size=a.shard_size, write_mode=a.write_mode,
                         compress_probability=a.compress_probability, strict=a.strict,
                         progress=not a.no_progress, check=a.check, labels=a.labels,
                         classes_from=a.classes_from, unlabeled=True if a.unlabeled else None,
                         verify=not a.no_verify)


def _verify(dst: Path, workers: int | None = None) -> int:
    from .verify import verify_output
    try:
        report = verify_output(dst, workers=workers)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"dino-convert --verify: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 3


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if isinstance(cfg, Path):
        return _verify(cfg)
    try:
        convert = CONVERTERS[cfg.format]
    except ImportError as e:
        print(f"dino-convert: format {cfg.format!r} is not available: {e}", file=sys.stderr)
        return 2
    try:
        manifest = convert(cfg)
    except (FileNotFoundError, ValueError, NotADirectoryError, RuntimeError) as e:
        print(f"dino-convert: error: {e}", file=sys.stderr)
        return 2
    for s in manifest.skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    classes = (f"{len(manifest.classes)} classes" if manifest.labelled else "unlabeled")
    rate = manifest.num_samples / manifest.seconds if manifest.seconds else 0.0
    print(f"dino-convert: wrote {manifest.num_samples} images in {classes} to {cfg.dst} "
          f"({cfg.format}); skipped {len(manifest.skipped)} files; {manifest.seconds:.1f} s, "
          f"{rate:.0f} images/s; manifest {Path(cfg.dst) / 'manifest.json'}")
    if cfg.verify:
        status = _verify(Path(cfg.dst), cfg.workers)
        if status:
            return status
    return 1 if (cfg.strict and manifest.skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
