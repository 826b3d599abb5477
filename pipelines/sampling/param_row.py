"""One view's ``ViewParams`` as a flat float64 row, for compiled code.

Compiled executors (the FFCV op, the batched DALI feed, the fused CPU photometric kernel)
cannot take dataclasses, so they exchange a view's parameters as one row of ``WIDTH``
float64 columns. ``to_row`` and ``from_row`` are exact inverses on every ``ViewParams``
(``blur_sigma`` None is stored as ``blur = 0`` with the sigma column kept at 1).

Columns (``COL``):
    top, left, height, width   crop box in source pixels
    flip                       1 = mirrored left-right
    jitter                     1 = colour jitter applied; then:
    order0..order3             the jitter order, indices into ``sampling.JITTER_OPS``
    brightness, contrast, saturation   blend factors
    hue                        hue shift in turns
    grayscale, blur            0 / 1
    sigma                      blur sigma in pixels (1 when not blurred)
    solarize                   0 / 1
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .draw import JitterParams, ViewParams

NAMES = ("top", "left", "height", "width", "flip", "jitter", "order0", "order1", "order2",
         "order3", "brightness", "contrast", "saturation", "hue", "grayscale", "blur", "sigma",
         "solarize")
COL = SimpleNamespace(**{name: i for i, name in enumerate(NAMES)})
WIDTH = len(NAMES)
ORDER = slice(COL.order0, COL.order3 + 1)
_NO_JITTER = (0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 0.0)  # order 0..3, identity factors


def to_row(p: ViewParams, out: np.ndarray | None = None) -> np.ndarray:
    """``p`` as float64 [WIDTH] (written into ``out`` when given)."""
    row = np.empty(WIDTH, dtype=np.float64) if out is None else out
    row[COL.top:COL.width + 1] = p.box
    row[COL.flip] = float(p.flip)
    row[COL.jitter] = float(p.jitter is not None)
    if p.jitter is None:
        row[COL.order0:COL.hue + 1] = _NO_JITTER
    else:
        j = p.jitter
        row[ORDER] = j.order
        row[COL.brightness:COL.hue + 1] = (j.brightness, j.contrast, j.saturation, j.hue)
    row[COL.grayscale] = float(p.grayscale)
    row[COL.blur] = float(p.blur_sigma is not None)
    row[COL.sigma] = 1.0 if p.blur_sigma is None else p.blur_sigma
    row[COL.solarize] = float(p.solarize)
    return row


def to_rows(params: list[ViewParams]) -> np.ndarray:
    """float64 [len(params), WIDTH]."""
    out = np.empty((len(params), WIDTH), dtype=np.float64)
    for p, row in zip(params, out):
        to_row(p, row)
    return out


def from_row(row: np.ndarray) -> ViewParams:
    """The ``ViewParams`` a row encodes."""
    r = [float(v) for v in row]
    jitter = None
    if r[COL.jitter]:
        order = tuple(int(v) for v in r[ORDER])
        jitter = JitterParams(order, r[COL.brightness], r[COL.contrast],  # type: ignore[arg-type]
                              r[COL.saturation], r[COL.hue])
    box = tuple(int(v) for v in r[COL.top:COL.width + 1])
    return ViewParams(box, bool(r[COL.flip]), jitter, bool(r[COL.grayscale]),  # type: ignore[arg-type]
                      r[COL.sigma] if r[COL.blur] else None, bool(r[COL.solarize]))
