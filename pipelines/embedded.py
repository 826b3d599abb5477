"""The embedded default dataset: an ImageFolder of real photos that needs no download.

The photos ship inside two installed packages: scikit-image (its ``data`` folder) and
scikit-learn (``datasets/images``, the photos behind ``load_sample_images``). They are read
directly from the package directories with PIL; nothing is imported from those packages and
nothing is fetched, so this works offline.

One class per source photo; the samples of a class are crops of that photo (random position,
size and aspect, resized so the longer side is 160-224 px, saved as JPEG). Train crops come
from one region of the photo and val crops from a disjoint region (the photo is split along
its longer side), so a weighted k-NN on train features must generalise to unseen pixels:
chance is ``1 / num_classes``.

Layout (built once, cached, atomically)::

    <cache>/embedded-v1/VERSION            version stamp, written last
    <cache>/embedded-v1/manifest.json      classes, sources and every crop's source box
    <cache>/embedded-v1/train/<class>/*.jpg
    <cache>/embedded-v1/val/<class>/*.jpg

``<cache>`` is ``cache_dir``, else ``$DINO_FAST_CACHE``, else ``~/.cache/dino-fast``.
Run ``python3 -m pipelines.embedded`` to build it and print its path and counts.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .folder import DatasetError

log = logging.getLogger(__name__)

NAME = "embedded-v1"
SEED = 20210429  # fixed: the dataset is identical on every machine with the same packages
TRAIN_PER_CLASS = 48
VAL_PER_CLASS = 12
TRAIN_FRACTION = 0.65  # share of the longer side given to the train region
CROP_SIDE = (0.45, 1.0)  # crop side as a fraction of the region's shorter side
CROP_RATIO = (3 / 4, 4 / 3)
OUT_LONG_SIDE = (160, 224)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class PhotoSource:
    """One source photo: the class name and where it lives inside an installed package."""

    name: str
    package: str
    relpath: str


SOURCES = (
    PhotoSource("astronaut", "skimage", "data/astronaut.png"),
    PhotoSource("chelsea", "skimage", "data/chelsea.png"),
    PhotoSource("coffee", "skimage", "data/coffee.png"),
    PhotoSource("rocket", "skimage", "data/rocket.jpg"),
    PhotoSource("motorcycle", "skimage", "data/motorcycle_left.png"),
    PhotoSource("hubble", "skimage", "data/hubble_deep_field.jpg"),
    PhotoSource("retina", "skimage", "data/retina.jpg"),
    PhotoSource("ihc", "skimage", "data/ihc.png"),
    PhotoSource("brick", "skimage", "data/brick.png"),
    PhotoSource("grass", "skimage", "data/grass.png"),
    PhotoSource("gravel", "skimage", "data/gravel.png"),
    PhotoSource("camera", "skimage", "data/camera.png"),
    PhotoSource("coins", "skimage", "data/coins.png"),
    PhotoSource("moon", "skimage", "data/moon.png"),
    PhotoSource("china", "sklearn", "datasets/images/china.jpg"),
    PhotoSource("flower", "sklearn", "datasets/images/flower.jpg"),
)


def source_path(src: PhotoSource) -> Path | None:
    """Where ``src`` is on disk, or None when its package or file is missing.

    Uses ``importlib.util.find_spec``, which locates a package without importing it.
    """
    spec = importlib.util.find_spec(src.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / src.relpath
    return path if path.is_file() else None


def available_sources() -> list[PhotoSource]:
    """The sources present in this environment, in ``SOURCES`` order."""
    return [s for s in SOURCES if source_path(s) is not None]


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> Image.Image:
    """The source photo ``name`` decoded as RGB. Cached: callers must not modify it."""
    src = next((s for s in SOURCES if s.name == name), None)
    if src is None:
        raise KeyError(f"unknown embedded photo {name!r}; known: {[s.name for s in SOURCES]}")
    path = source_path(src)
    if path is None:
        raise DatasetError(f"embedded photo {name!r} not found: is {src.package} installed? "
                           f"(expected {src.package}/{src.relpath})")
    with Image.open(path) as im:
        return im.convert("RGB")


def split_regions(width: int, height: int, train_fraction: float = TRAIN_FRACTION
                  ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Disjoint (train, val) regions as PIL boxes (left, top, right, bottom).

    The photo is cut across its longer side: the first ``train_fraction`` goes to train.
    """
    if width >= height:
        cut = int(round(width * train_fraction))
        return (0, 0, cut, height), (cut, 0, width, height)
    cut = int(round(height * train_fraction))
    return (0, 0, width, cut), (0, cut, width, height)


def random_crops(photo: Image.Image, region: tuple[int, int, int, int], count: int,
                 long_side: tuple[int, int], rng: np.random.Generator
                 ) -> list[tuple[Image.Image, tuple[int, int, int, int]]]:
    """``count`` random crops of ``photo`` inside ``region``, each with its source box.

    Crop side: a fraction ``CROP_SIDE`` of the region's shorter side; aspect log-uniform in
    ``CROP_RATIO``; the crop is resized (bicubic) so its longer side is uniform in
    ``long_side``. Returns [(RGB image, (left, top, right, bottom))].
    """
    left, top, right, bottom = region
    rw, rh = right - left, bottom - top
    out = []
    for _ in range(count):
        side = min(rw, rh) * rng.uniform(*CROP_SIDE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = max(1, min(rw, int(round(side * math.sqrt(aspect)))))
        h = max(1, min(rh, int(round(side / math.sqrt(aspect)))))
        x = left + int(rng.integers(0, rw - w + 1))
        y = top + int(rng.integers(0, rh - h + 1))
        box = (x, y, x + w, y + h)
        target = int(rng.integers(long_side[0], long_side[1] + 1))
        scale = target / max(w, h)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        out.append((photo.crop(box).resize(size, Image.BICUBIC), box))
    return out


def _stamp(classes: list[str]) -> str:
    return (f"{NAME} seed={SEED} train={TRAIN_PER_CLASS} val={VAL_PER_CLASS} "
            f"classes={','.join(classes)}\n")


def _build_into(root: Path, sources: list[PhotoSource]) -> None:
    """Write the whole dataset under ``root`` (an empty directory); VERSION last."""
    rng = np.random.default_rng(SEED)
    manifest: dict = {"name": NAME, "seed": SEED, "classes": [s.name for s in sources],
                      "sources": {s.name: f"{s.package}/{s.relpath}" for s in sources},
                      "samples": []}
    for src in sources:
        photo = load_source(src.name)
        regions = split_regions(*photo.size)
        for split, region, count in (("train", regions[0], TRAIN_PER_CLASS),
                                     ("val", regions[1], VAL_PER_CLASS)):
            cdir = root / split / src.name
            cdir.mkdir(parents=True)
            for i, (img, box) in enumerate(random_crops(photo, region, count, OUT_LONG_SIDE, rng)):
                rel = f"{split}/{src.name}/{src.name}_{i:03d}.jpg"
                img.save(root / rel, format="JPEG", quality=JPEG_QUALITY)
                manifest["samples"].append({"split": split, "class": src.name, "file": rel,
                                            "box": list(box)})
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (root / "VERSION").write_text(_stamp([s.name for s in sources]))


def default_cache_dir() -> Path:
    """``$DINO_FAST_CACHE`` if set, else ``~/.cache/dino-fast``."""
    env = os.environ.get("DINO_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dino-fast"


def _is_current(root: Path, expected: str) -> bool:
    stamp = root / "VERSION"
    return stamp.is_file() and stamp.read_text() == expected


def default_dataset(cache_dir: str | Path | None = None) -> Path:
    """The embedded dataset's root (holding ``train/`` and ``val/``), built on first use.

    The build happens in a temporary directory next to the final one and is renamed into
    place, so an interrupted build never leaves a half dataset that looks finished, and
    concurrent callers (several ranks) all end up with the same complete copy.
    """
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = parent / NAME
    sources = available_sources()
    if len(sources) < 2:
        raise DatasetError("cannot build the embedded dataset: fewer than two source photos "
                           "found (install scikit-image and scikit-learn)")
    expected = _stamp([s.name for s in sources])
    if _is_current(root, expected):
        return root
    parent.mkdir(parents=True, exist_ok=True)
    log.info("building the embedded dataset (%d classes) in %s", len(sources), root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=parent))
    try:
        _build_into(tmp, sources)
        if root.exists() and not _is_current(root, expected):
            stale = Path(tempfile.mkdtemp(prefix=f".{NAME}.stale-", dir=parent))
            os.replace(root, stale / "old")  # move aside first: never delete in place
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_current(root, expected):  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """{split: {class: number of .jpg files}} of a built dataset."""
    return {split: {c.name: len(list(c.glob("*.jpg")))
                    for c in sorted((root / split).iterdir()) if c.is_dir()}
            for split in ("train", "val")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m pipelines.embedded",
        description="Build (once) the embedded default dataset of real photos shipped in "
                    "scikit-image and scikit-learn, and print its path and image counts.")
    parser.add_argument("--cache-dir", default=None,
                        help="parent folder (default: $DINO_FAST_CACHE or ~/.cache/dino-fast)")
    args = parser.parse_args(argv)
    root = default_dataset(args.cache_dir)
    counts = count_images(root)
    print(root)
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} images in {len(per_class)} classes "
              f"({', '.join(f'{c}={n}' for c, n in per_class.items())})")


if __name__ == "__main__":
    main()
