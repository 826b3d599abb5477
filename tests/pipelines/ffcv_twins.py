"""What the FFCV executor's tests hold its batches against (CPU and GPU tests share it).

- ``RECIPE`` / ``PLAIN``: tiny specs (32 px global, 16 px local views), the recipe's
  probabilities / every photometric probability 0.
- ``synthetic_folder``: a small ImageFolder of synthetic JPEGs (numpy + PIL only: for the
  GPU machine, which may lack the embedded photos' packages).
- ``convert_folder``: a .beton of an ImageFolder with the project's converter.
- ``stored_images``: each sample's pixels decoded ONCE with FFCV's own decoder (or raw).
- ``reference_params`` / ``twin_crops``: what the reference executor draws for a sample,
  and the views cut from one decode with those boxes and flips.
Importing this module needs ffcv (tests importing it skip without it first).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from ffcv.libffcv import imdecode
from ffcv.reader import Reader
from PIL import Image

from pipelines import reference as ref
from pipelines.convert.beton import convert
from pipelines.convert.common import ConvertConfig
from pipelines.ffcv_backend.resample import filter_code, resize_crop
from pipelines.sampling import sample_image_params, sample_rng
from pipelines.spec import AugmentationSpec, ColorJitterSpec, ViewSpec

RECIPE = AugmentationSpec(global_views=(ViewSpec(32, (0.4, 1.0), 1.0, 0.0),
                                        ViewSpec(32, (0.4, 1.0), 0.1, 0.2)),
                          local_view=ViewSpec(16, (0.05, 0.4), 0.5, 0.0), local_crops=2)
PLAIN = RECIPE.with_overrides(
    global_views=tuple(dataclasses.replace(v, blur_p=0.0, solarize_p=0.0)
                       for v in RECIPE.global_views),
    local_view=dataclasses.replace(RECIPE.local_view, blur_p=0.0),
    jitter=ColorJitterSpec(p=0.0), grayscale_p=0.0)
SEED = 3


def synthetic_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """Write ``root/class<c>/<i>.jpg``: colour gradients with noise, 40-64 px a side, q90
    (deterministic for ``seed``). Returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(x) for x in rng.integers(40, 65, 2))
            y, x = np.mgrid[0:h, 0:w] / max(h, w)
            slope = rng.uniform(-200, 200, (2, 3))
            pixels = (rng.uniform(0, 255, 3) + y[..., None] * slope[0] + x[..., None] * slope[1]
                      + rng.normal(0, 20, (h, w, 3)))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / f"{i:03d}.jpg", quality=90)
    return root


def convert_folder(folder: Path, dst: Path, mode: str) -> Path:
    """``folder`` (an ImageFolder) as ``dst/train.beton``, images stored as ``mode``
    ("jpg" or "raw"), longer side at most 64."""
    convert(ConvertConfig(src=folder, dst=dst, format="ffcv", write_mode=mode, max_side=64,
                          workers=2, progress=False))
    return dst / "train.beton"


def stored_images(path: Path, image: str = "image", label: str = "label"
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each sample's pixels, decoded ONCE with FFCV's own decoder (or raw), and the labels
    (the fields named ``image`` and ``label``)."""
    reader = Reader(str(path))
    sizes = {int(r["ptr"]): int(r["size"]) for r in reader.alloc_table}
    data = np.frombuffer(path.read_bytes(), np.uint8)
    images = []
    for field in reader.metadata[f"f{reader.field_names.index(image)}"]:
        ptr, h, w = int(field["data_ptr"]), int(field["height"]), int(field["width"])
        payload = data[ptr:ptr + sizes[ptr]]
        if field["mode"] == 0:
            out = np.zeros(h * w * 3, np.uint8)
            assert imdecode(payload, out, h, w, h, w, 0, 0, 1, 1, False, False) == 0
            images.append(out.reshape(h, w, 3))
        else:
            images.append(payload.reshape(h, w, 3))
    return images, np.asarray(reader.metadata[f"f{reader.field_names.index(label)}"],
                              dtype=np.int64)


def reference_params(spec: AugmentationSpec, image: np.ndarray, seed: int, rank: int,
                     epoch: int, index: int):
    """What the reference executor draws for this sample (image: uint8 [H, W, 3])."""
    return sample_image_params(spec, image.shape[1], image.shape[0],
                               sample_rng(seed, rank, epoch, index))


def twin_crops(spec: AugmentationSpec, image: np.ndarray, seed: int, rank: int, epoch: int,
               index: int, pil: bool = False) -> list[np.ndarray]:
    """The views of one sample from one decoded image, boxes and flips the reference draws,
    resampled by the compiled resize (or the reference's PIL resize): uint8 [S, S, 3] each."""
    out = []
    for view, p in zip(spec.views(), reference_params(spec, image, seed, rank, epoch, index)):
        if pil:
            crop = ref.resized_crop(Image.fromarray(image), p.box, view.size, spec.interpolation)
            out.append(np.asarray(ref.hflip(crop) if p.flip else crop))
        else:
            crop = np.zeros((view.size, view.size, 3), np.uint8)
            resize_crop(image, *p.box, p.flip, crop, filter_code(spec.interpolation))
            out.append(crop)
    return out
