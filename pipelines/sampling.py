"""Random per-view augmentation parameters, drawn from the shared spec.

Executors that apply augmentations outside a graph (the PIL reference executor, the FFCV
decode-once crop op, the batched tensor ops) all draw their randomness here, so one seed gives
one set of parameters whatever executes them. That is also what makes op-by-op fidelity tests
possible: draw (or force) a ``ViewParams`` and hand it to two executors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import AugmentationSpec, ViewSpec

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class JitterParams:
    """Colour jitter factors and the order (indices into JITTER_OPS) they are applied in."""

    order: tuple[int, int, int, int]
    brightness: float
    contrast: float
    saturation: float
    hue: float  # fraction of a full turn, in [-spec.hue, spec.hue]


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view of one image.

    ``box`` is (top, left, height, width) in source pixels; ``jitter`` is None when colour
    jitter is not applied; ``blur_sigma`` is None when the view is not blurred.
    """

    box: tuple[int, int, int, int]
    flip: bool
    jitter: JitterParams | None
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def sample_rng(seed: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample: independent streams per (seed, global rank, epoch, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, rank, epoch, index]))


def sample_crop_box(width: int, height: int, scale: tuple[float, float],
                    ratio: tuple[float, float], rng: np.random.Generator
                    ) -> tuple[int, int, int, int]:
    """Random resized crop box (top, left, height, width).

    Up to ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio
    in ``ratio``; if none fits, the largest centred crop whose ratio is clamped to ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def sample_jitter(spec: AugmentationSpec, rng: np.random.Generator) -> JitterParams | None:
    j = spec.jitter
    if rng.random() >= j.p:
        return None
    order = tuple(int(i) for i in rng.permutation(4))
    b = rng.uniform(max(0.0, 1 - j.brightness), 1 + j.brightness)
    c = rng.uniform(max(0.0, 1 - j.contrast), 1 + j.contrast)
    s = rng.uniform(max(0.0, 1 - j.saturation), 1 + j.saturation)
    h = rng.uniform(-j.hue, j.hue)
    return JitterParams(order, float(b), float(c), float(s), float(h))  # type: ignore[arg-type]


def sample_view_params(spec: AugmentationSpec, view: ViewSpec, width: int, height: int,
                       rng: np.random.Generator) -> ViewParams:
    """Draw one view's parameters in a fixed order (box, flip, jitter, gray, blur, solarize)."""
    box = sample_crop_box(width, height, view.scale, spec.ratio, rng)
    flip = bool(rng.random() < spec.flip_p)
    jitter = sample_jitter(spec, rng)
    gray = bool(rng.random() < spec.grayscale_p)
    blur = bool(rng.random() < view.blur_p)
    sigma = float(rng.uniform(*spec.blur_sigma))
    solarize = bool(rng.random() < view.solarize_p)
    return ViewParams(box, flip, jitter, gray, sigma if blur else None, solarize)


def sample_image_params(spec: AugmentationSpec, width: int, height: int,
                        rng: np.random.Generator) -> list[ViewParams]:
    """Parameters of every view of one image, in ``spec.views()`` order."""
    return [sample_view_params(spec, v, width, height, rng) for v in spec.views()]
