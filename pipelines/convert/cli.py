"""``dino-convert``: turn an image folder into FFCV or DALI format."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .common import ConvertConfig

WRITERS = {"wds": "pipelines.convert.wds:convert", "ffcv": "pipelines.convert.beton:convert"}

EPILOG = """\
formats:
  wds   WebDataset-style tar shards (<key>.jpg + <key>.cls, 9-digit keys), one DALI index per
        shard (.idx, the format of DALI's wds2idx), and manifest.json. Read it with
        `dino-train --backend dali --data DST`. Resumable: finished shards are kept.
  ffcv  one .beton file (FFCV's writer: RGB image field + int label) next to a
        manifest. Read it with `dino-train --backend ffcv --data DST/train.beton`.

Bad files (zero-byte, truncated, not an image, decompression bombs, unreadable...) are
skipped and listed in the manifest and at the end; every good image is still converted.
The exit status is 0 unless --strict is given and something was skipped.

examples:
  dino-convert --format wds  /data/imagenet/train /data/imagenet-wds/train --workers 16
  dino-convert --format ffcv /data/imagenet/train /data/imagenet-ffcv --max-side 512
"""


def parse_args(argv: list[str] | None = None) -> ConvertConfig:
    p = argparse.ArgumentParser(
        prog="dino-convert", description="Convert an ImageFolder tree (SRC/<class>/<image>) "
        "to a fast training format.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ConvertConfig(Path("."), Path("."))
    p.add_argument("src", type=Path, help="image folder with one sub-folder per class")
    p.add_argument("dst", type=Path, help="output folder (created)")
    p.add_argument("--format", choices=sorted(WRITERS), default=d.format, help="output format")
    p.add_argument("--max-side", type=int, default=d.max_side,
                   help="re-encode images whose longer side exceeds this (default %(default)s; "
                   "ImageNet training rarely profits from more, and it keeps decode cheap)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality,
                   help="JPEG quality of re-encoded images (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="parallel encoding processes (default: all cores, %(default)s)")
    p.add_argument("--shard-size", type=int, default=d.shard_size,
                   help="wds: images per tar shard (default %(default)s)")
    p.add_argument("--write-mode", choices=("raw", "jpg", "proportion"), default=d.write_mode,
                   help="ffcv: how images are stored (default %(default)s)")
    p.add_argument("--compress-probability", type=float, default=d.compress_probability,
                   help="ffcv, --write-mode proportion: share stored as JPEG")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.max_side < 16:
        p.error(f"--max-side must be >= 16, got {a.max_side}")
    if not 1 <= a.jpeg_quality <= 100:
        p.error(f"--jpeg-quality must be in 1..100, got {a.jpeg_quality}")
    if a.workers < 1 or a.shard_size < 1:
        p.error("--workers and --shard-size must be >= 1")
    return ConvertConfig(src=a.src, dst=a.dst, format=a.format, max_side=a.max_side,
                         jpeg_quality=a.jpeg_quality, workers=a.workers,
                         shard_size=a.shard_size, write_mode=a.write_mode,
                         compress_probability=a.compress_probability, strict=a.strict,
                         progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    module_name, fn_name = WRITERS[cfg.format].split(":")
    try:
        convert = getattr(importlib.import_module(module_name), fn_name)
    except ImportError as e:
        print(f"dino-convert: format {cfg.format!r} is not available: {e}", file=sys.stderr)
        return 2
    try:
        manifest = convert(cfg)
    except (FileNotFoundError, ValueError, NotADirectoryError) as e:
        print(f"dino-convert: error: {e}", file=sys.stderr)
        return 2
    for s in manifest.skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    print(f"dino-convert: wrote {manifest.num_samples} images in {len(manifest.classes)} classes "
          f"to {cfg.dst} ({cfg.format}); skipped {len(manifest.skipped)} files")
    return 1 if (cfg.strict and manifest.skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
