"""Compiled crop + resize + flip of uint8 RGB images, with PIL's resampling filters.

The reference executor resizes crops with PIL (``Image.resize`` with the spec's
interpolation). This is the same separable convolution, written for numba: for each output
pixel a window of source pixels centred on ``(i + 0.5) * scale``, with the filter stretched
by the scale when shrinking (so shrinking is antialiased, as in PIL) and clipped to the crop.
Filters: "bicubic" (Keys, a = -0.5, as PIL), "bilinear" (triangle), "nearest" (the source
pixel under the output pixel centre). Accumulation is float32, rounded and clipped to uint8
after each pass as PIL does. PIL's weights are fixed-point and, for some crop shapes, it runs
its two passes in the other order (which moves where bicubic overshoot is clipped), so
results differ from PIL's by mean <= 0.3 and at most a few levels at hard edges
(tests/pipelines/test_ffcv_crops.py).

OpenCV's ``INTER_AREA``, which FFCV's stock decoders use, is not used: it is neither of the
spec's filters.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..spec import INTERPOLATIONS

NEAREST, BILINEAR, BICUBIC = (INTERPOLATIONS.index(n) for n in ("nearest", "bilinear",
                                                                "bicubic"))


def filter_code(interpolation: str) -> int:
    """The compiled filter's code of a spec interpolation name."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; one of {INTERPOLATIONS}")
    return INTERPOLATIONS.index(interpolation)


@njit(cache=True)
def _filter(kind: int, x: float) -> float:
    x = abs(x)
    if kind == BILINEAR:
        return 1.0 - x if x < 1.0 else 0.0
    a = -0.5  # bicubic
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@njit(cache=True)
def filter_weights(in_size: int, out_size: int, kind: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: first source pixel, tap count, and normalised weights.

    Returns start int64 [out], count int64 [out], weights float32 [out, max_taps].
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = (2.0 if kind == BICUBIC else 1.0) * stretch
    taps = 1 if kind == NEAREST else int(math.ceil(support)) * 2 + 1
    start = np.zeros(out_size, np.int64)
    count = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.float32)
    for i in range(out_size):
        center = (i + 0.5) * scale
        if kind == NEAREST:
            start[i] = min(int(center), in_size - 1)
            count[i] = 1
            weights[i, 0] = 1.0
            continue
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        total = 0.0
        for j in range(hi - lo):
            w = _filter(kind, (j + lo - center + 0.5) / stretch)
            weights[i, j] = w
            total += w
        if total != 0.0:
            for j in range(hi - lo):
                weights[i, j] /= total
        start[i], count[i] = lo, hi - lo
    return start, count, weights


@njit(cache=True)
def _to_u8(v: float) -> np.uint8:
    """Round half up and clip to [0, 255], as PIL stores every pass."""
    r = math.floor(v + 0.5)
    return np.uint8(0 if r < 0 else (255 if r > 255 else r))


@njit(cache=True)
def _horizontal(src: np.ndarray, top: int, left: int, xs: np.ndarray, xn: np.ndarray,
                xw: np.ndarray, out: np.ndarray) -> None:
    """out[y, x] = sum_k xw[x, k] * src[top + y, left + xs[x] + k]; out uint8 [h, w, 3]."""
    for y in range(out.shape[0]):
        line = src[top + y]
        for x in range(out.shape[1]):
            a0 = a1 = a2 = np.float32(0.0)
            for k in range(xn[x]):
                px = left + xs[x] + k
                wk = xw[x, k]
                a0 += wk * line[px, 0]
                a1 += wk * line[px, 1]
                a2 += wk * line[px, 2]
            out[y, x, 0] = _to_u8(a0)
            out[y, x, 1] = _to_u8(a1)
            out[y, x, 2] = _to_u8(a2)


@njit(cache=True)
def _vertical(src: np.ndarray, top: int, left: int, ys: np.ndarray, yn: np.ndarray,
              yw: np.ndarray, out: np.ndarray) -> None:
    """out[y, x] = sum_k yw[y, k] * src[top + ys[y] + k, left + x]; out uint8 [h, w, 3]."""
    width = out.shape[1]
    acc = np.empty(width * 3, np.float32)
    for y in range(out.shape[0]):
        acc[:] = 0.0
        for k in range(yn[y]):
            wk = yw[y, k]
            line = src[top + ys[y] + k, left:left + width].reshape(-1)
            for j in range(width * 3):
                acc[j] += wk * line[j]
        for x in range(width):
            for c in range(3):
                out[y, x, c] = _to_u8(acc[3 * x + c])


@njit(cache=True)
def resize_crop(src: np.ndarray, top: int, left: int, height: int, width: int, flip: bool,
                dst: np.ndarray, kind: int) -> None:
    """Resize src[top:top+height, left:left+width] (uint8 [H, W, 3]) into dst (uint8
    [h, w, 3]), mirrored left-right when ``flip``.

    Two passes with a uint8 intermediate, in the order that keeps the intermediate smaller.
    The crop is taken first, so the filter is clipped at the crop's edges.
    """
    out_h, out_w = dst.shape[0], dst.shape[1]
    xs, xn, xw = filter_weights(width, out_w, kind)
    ys, yn, yw = filter_weights(height, out_h, kind)
    if height * out_w <= out_h * width:
        rows = np.empty((height, out_w, 3), np.uint8)
        _horizontal(src, top, left, xs, xn, xw, rows)
        _vertical(rows, 0, 0, ys, yn, yw, dst)
    else:
        cols = np.empty((out_h, width, 3), np.uint8)
        _vertical(src, top, left, ys, yn, yw, cols)
        _horizontal(cols, 0, 0, xs, xn, xw, dst)
    if flip:
        for y in range(out_h):
            for x in range(out_w // 2):
                for c in range(3):
                    a = dst[y, x, c]
                    dst[y, x, c] = dst[y, out_w - 1 - x, c]
                    dst[y, out_w - 1 - x, c] = a
