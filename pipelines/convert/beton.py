"""``dino-convert --format ffcv``: an image folder to one .beton, with FFCV's writer.

Output in ``cfg.dst``: ``<src folder name>.beton`` with fields ``image`` (FFCV
RGBImageField: longer side at most ``max_side``, stored as JPEG of ``jpeg_quality``, raw
pixels, or a mix with ``compress_probability`` JPEG) and ``label`` (IntField, the index of
the class folder in sorted order), then ``manifest.json`` (classes, count, checksum, skipped
files and why, options), written last.

Reliability: FFCV's writer stops (or hangs) on the first file it cannot read, so every file
is first decoded in parallel (``pipelines.folder.check_image``) and the bad ones are skipped
and reported. The writer writes to a hidden ``.<name>.partial`` file renamed only when
complete, and the old manifest is removed before, so an interrupted run never leaves a
.beton a reader accepts. Running the same conversion again after it finished is a no-op.
A file that turns bad between the check and the write (changed on disk meanwhile) fails
the conversion with its name, leaving nothing behind.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..folder import DatasetError, Skipped, check_image, scan_image_folder
from .common import ConvertConfig, Manifest, fsync_path, sha256_file

WRITE_MODES = ("raw", "jpg", "proportion")
MANIFEST = "manifest.json"


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB; transparency is composited on white."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = im.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


class FolderImages:
    """The indexable dataset FFCV's writer reads: item i -> (uint8 [H, W, 3], label).

    Never raises (an exception inside FFCV's writer processes hangs the writer): a file
    that fails is recorded in ``failures_dir`` and replaced by a 1x1 placeholder, and the
    caller discards the whole output.
    """

    def __init__(self, samples: list[tuple[str, int]], failures_dir: Path) -> None:
        self.samples, self.failures_dir = samples, failures_dir

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        try:
            return load_rgb(path), label
        except Exception as e:  # hostile files raise many types
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")
            with open(self.failures_dir / f"{os.getpid()}.txt", "a") as f:
                f.write(f"{path}: {reason}\n")
            return np.zeros((1, 1, 3), np.uint8), label


def precheck(samples: list[tuple[str, int]], workers: int, progress: bool
             ) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """Decode every file in parallel; split into good samples and skipped files."""
    paths = [p for p, _ in samples]
    chunk = max(1, min(64, len(paths) // (4 * workers) or 1))
    with Pool(workers) as pool:
        reasons = list(tqdm(pool.imap(check_image, paths, chunksize=chunk), total=len(paths),
                            desc="checking images", disable=not progress, unit="img"))
    good = [s for s, r in zip(samples, reasons) if r is None]
    bad = [Skipped(p, r) for p, r in zip(paths, reasons) if r is not None]
    return good, bad


@contextlib.contextmanager
def _writer_progress(writer_module, enabled: bool) -> Iterator[None]:
    """FFCV's writer always draws a tqdm bar; swap in a disabled one when asked."""
    if enabled:
        yield
        return
    original = writer_module.tqdm
    writer_module.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        writer_module.tqdm = original


def _options(cfg: ConvertConfig) -> dict:
    return {"max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality,
            "write_mode": cfg.write_mode, "compress_probability": cfg.compress_probability}


def _validate(cfg: ConvertConfig) -> None:
    if cfg.write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {cfg.write_mode!r}")
    if not 0.0 <= cfg.compress_probability <= 1.0:
        raise ValueError(f"compress_probability must be in [0, 1], got "
                         f"{cfg.compress_probability}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {cfg.jpeg_quality}")
    if cfg.max_side < 16:
        raise ValueError(f"max_side must be >= 16, got {cfg.max_side}")


def _finished(dst: Path, name: str, cfg: ConvertConfig) -> Manifest | None:
    """The manifest of an identical conversion that already finished in dst, else None."""
    manifest_path = dst / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = Manifest.load(manifest_path)
    names = [s.get("name") for s in manifest.shards]
    if manifest.format != "ffcv" or names != [name]:
        raise ValueError(f"{dst} already holds another converted dataset ({manifest.format}: "
                         f"{', '.join(map(str, names))}); use an empty output folder")
    beton = dst / name
    same = (manifest.options == _options(cfg) and beton.is_file()
            and beton.stat().st_size == manifest.shards[0].get("bytes"))
    return manifest if same else None


def _write_beton(samples: list[tuple[str, int]], cfg: ConvertConfig, tmp: Path) -> None:
    """FFCV's DatasetWriter over ``samples`` into ``tmp``; raises if any file failed."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField

    failures_dir = tmp.with_name(tmp.name + ".failures")
    failures_dir.mkdir(exist_ok=True)
    try:
        fields = {"image": RGBImageField(write_mode=cfg.write_mode, max_resolution=cfg.max_side,
                                         jpeg_quality=cfg.jpeg_quality,
                                         compress_probability=cfg.compress_probability),
                  "label": IntField()}
        writer = ffcv.writer.DatasetWriter(str(tmp), fields, num_workers=cfg.workers)
        chunk = max(1, min(100, len(samples) // (4 * cfg.workers) or 1))
        with _writer_progress(ffcv.writer, cfg.progress):
            writer.from_indexed_dataset(FolderImages(samples, failures_dir), chunksize=chunk)
        failures = [line for f in sorted(failures_dir.iterdir())
                    for line in f.read_text().splitlines() if line]
    finally:
        for f in failures_dir.iterdir():
            f.unlink()
        failures_dir.rmdir()
    if failures:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{len(failures)} file(s) changed or became unreadable during the "
                         f"conversion, nothing written; run again: " + "; ".join(failures[:5]))


def convert(cfg: ConvertConfig) -> Manifest:
    """Convert ``cfg.src`` (an ImageFolder tree) into ``cfg.dst/<src name>.beton``."""
    _validate(cfg)
    src, dst = Path(cfg.src), Path(cfg.dst)
    scan = scan_image_folder(src)
    name = f"{src.resolve().name}.beton"
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"output path {dst} exists and is not a folder")
    dst.mkdir(parents=True, exist_ok=True)
    done = _finished(dst, name, cfg)
    if done is not None:
        return done
    good, bad = precheck(scan.samples, cfg.workers, cfg.progress)
    skipped = scan.skipped + bad
    if not good:
        raise DatasetError(f"no decodable images under {src} ({len(skipped)} files skipped)")
    (dst / MANIFEST).unlink(missing_ok=True)  # from here on dst holds no finished dataset
    tmp = dst / f".{name}.partial"
    _write_beton(good, cfg, tmp)
    fsync_path(tmp)
    os.replace(tmp, dst / name)
    fsync_path(dst)
    beton = dst / name
    manifest = Manifest(
        format="ffcv", classes=scan.classes, num_samples=len(good),
        shards=[{"name": name, "count": len(good), "bytes": beton.stat().st_size,
                 "sha256": sha256_file(beton)}],
        skipped=[{"path": s.path, "reason": s.reason} for s in skipped],
        options=_options(cfg))
    manifest.save(dst / MANIFEST)
    return manifest
