"""Random per-view augmentation parameters, drawn from the shared spec.

This is the plain-Python definition of what every executor draws: the PIL reference
executor and the evaluation probe call it directly; the DALI feed and the FFCV op run its
compiled twin (``pipelines.sampling.compiled_draw``), tested to give bitwise-identical rows. All of
them read one counter stream per sample (``sample_rng(seed, rank, epoch, index)``, see
``pipelines.sampling.counter_stream``), so one seed gives one set of parameters whatever executes
them. That is also what makes op-by-op fidelity tests possible: draw (or force) a
``ViewParams`` and hand it to two executors.

The functions take any object with the numpy ``Generator`` methods they call (``random``,
``uniform``, ``integers``, ``permutation``): a ``CounterRNG`` in the executors, a numpy
Generator in statistical tests. The ORDER of draws is part of the contract: the compiled
twin replays it counter by counter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from .counter_stream import CounterRNG, sample_key
from ..spec import AugmentationSpec, ViewSpec

Rng = Union[np.random.Generator, CounterRNG]

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


def sample_rng(seed: int, rank: int, epoch: int, index: int) -> CounterRNG:
    """The stream of one sample: independent per (seed, global rank, epoch, index).

    One sequential counter stream per sample; ``sample_image_params`` draws its views from
    it in ``spec.views()`` order. The compiled executors derive the same key
    (``sample_key``) and replay the same counters.
    """
    return CounterRNG(sample_key(seed, rank, epoch, index))


def sample_crop_box(width: int, height: int, scale: tuple[float, float],
                    ratio: tuple[float, float], rng: Rng
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


def jitter_ranges(spec: AugmentationSpec) -> tuple[tuple[float, float], ...]:
    """(low, high) of the brightness, contrast, saturation and hue draws (JITTER_OPS order):
    factors uniform in [max(0, 1 - x), 1 + x], hue shift in [-hue, hue] turns. The compiled
    sampler reads its bounds from here too, so the formula exists once."""
    j = spec.jitter
    factors = tuple((max(0.0, 1 - x), 1 + x) for x in (j.brightness, j.contrast, j.saturation))
    return factors + ((-j.hue, j.hue),)


def sample_jitter(spec: AugmentationSpec, rng: Rng) -> JitterParams | None:
    """Colour jitter with probability ``spec.jitter.p``: op order, then the four factors."""
    if rng.random() >= spec.jitter.p:
        return None
    order = tuple(int(i) for i in rng.permutation(len(JITTER_OPS)))
    b, c, s, h = (float(rng.uniform(lo, hi)) for lo, hi in jitter_ranges(spec))
    return JitterParams(order, b, c, s, h)  # type: ignore[arg-type]


def sample_view_params(spec: AugmentationSpec, view: ViewSpec, width: int, height: int,
                       rng: Rng) -> ViewParams:
    """Draw one view's parameters in a fixed order, which the compiled twin replays.

    Uniform draws, in order: crop box (two per try, up to ten tries, then top and left; none
    more when the centred fallback is used), flip, jitter applied?, and if so the jitter
    order (three, Fisher-Yates on four ops) and its four factors; grayscale, blur, sigma
    (drawn even when not blurred, so later draws do not depend on the blur), solarize.
    """
    box = sample_crop_box(width, height, view.scale, spec.ratio, rng)
    flip = bool(rng.random() < spec.flip_p)
    jitter = sample_jitter(spec, rng)
    gray = bool(rng.random() < spec.grayscale_p)
    blur = bool(rng.random() < view.blur_p)
    sigma = float(rng.uniform(*spec.blur_sigma))
    solarize = bool(rng.random() < view.solarize_p)
    return ViewParams(box, flip, jitter, gray, sigma if blur else None, solarize)


def sample_image_params(spec: AugmentationSpec, width: int, height: int,
                        rng: Rng) -> list[ViewParams]:
    """Parameters of every view of one image, in ``spec.views()`` order."""
    return [sample_view_params(spec, v, width, height, rng) for v in spec.views()]
