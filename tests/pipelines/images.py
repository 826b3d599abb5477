"""Tiny test images: small ImageFolders of real photo crops, and a zoo of bad files.

Reusable by any test (``from tests.pipelines.images import write_image_folder``). The photos
are the embedded dataset's sources (scikit-image / scikit-learn, read from disk, no network),
so crops have real image statistics (edges, texture, colour) at a tiny size.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.embedded import available_sources, load_source, random_crops


def write_image_folder(root: str | Path, num_classes: int = 3, per_class: int = 4,
                       long_side: tuple[int, int] = (40, 64), seed: int = 0) -> Path:
    """Write ``root/<class>/<class>_NNN.jpg``: ``per_class`` crops of one photo per class.

    Classes are the first ``num_classes`` embedded photos in ``SOURCES`` order (a folder scan
    labels them by sorted name); crops are resized so their longer side is in ``long_side``.
    Deterministic for a given ``seed``. Returns ``root``.
    """
    sources = available_sources()
    if num_classes > len(sources):
        raise ValueError(f"only {len(sources)} source photos available, asked for {num_classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for src in sources[:num_classes]:
        photo = load_source(src.name)
        cdir = root / src.name
        cdir.mkdir(parents=True, exist_ok=True)
        crops = random_crops(photo, (0, 0, *photo.size), per_class, long_side, rng)
        for i, (img, _) in enumerate(crops):
            img.save(cdir / f"{src.name}_{i:03d}.jpg", format="JPEG", quality=90)
    return root


def photo_crop(size: tuple[int, int] = (64, 48), name: str | None = None) -> Image.Image:
    """One RGB photo crop of ``size`` (width, height) from the centre of an embedded photo."""
    photo = load_source(name or available_sources()[0].name)
    w, h = photo.size
    side = min(w, h) // 2
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
    return photo.crop(box).resize(size, Image.BICUBIC)


def write_bad_files(class_dir: str | Path) -> dict[str, str]:
    """Write a zoo of unusable files into ``class_dir``; returns {file name: what it is}.

    Every file has an image extension unless noted, so only decoding reveals most of them.
    """
    d = Path(class_dir)
    d.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    photo_crop((32, 32)).save(good, format="JPEG", quality=90)
    jpeg = good.getvalue()
    files = {
        "zero_byte.jpg": (b"", "zero-byte file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "random_bytes.jpg": (bytes(range(256)) * 8, "random bytes named .jpg"),
        "notes.txt": (b"not an image\n", "non-image file (.txt)"),
        ".DS_Store": (b"\x00\x00\x00\x01Bud1", "non-image file (.DS_Store)"),
    }
    for name, (data, _) in files.items():
        (d / name).write_bytes(data)
    return {name: what for name, (_, what) in files.items()}
