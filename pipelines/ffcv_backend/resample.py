"""Compiled crop + resize + flip of uint8 RGB images, with PIL's resampling filters.

The reference executor resizes crops with PIL (``Image.resize`` with the spec's
interpolation). This is the same separable convolution, written for numba: for each output
pixel a window of source pixels centred on ``(i + 0.5) * scale``, with the filter stretched
by the scale when shrinking (so shrinking is antialiased, as in PIL) and clipped to the crop.
Filters: "bicubic" (Keys, a = -0.5, as PIL), "bilinear" (triangle), "nearest" (the source
pixel under the output pixel centre). Accumulation is float32, rounded half up and clipped
to uint8 after each pass as PIL does. PIL's weights are fixed-point and, for some crop
shapes, it runs its two passes in the other order (which moves where bicubic overshoot is
clipped), so results differ from PIL's by mean <= 0.3 and at most a few levels at hard edges
(tests/pipelines/test_ffcv_crops.py).

Two implementations, bit-identical (tests/pipelines/test_ffcv_resample.py):

- ``resize_crop_simple``: the plain twin, the first implementation: variable-length tap
  loops straight from ``filter_weights``, the flip as a final swap.
- ``resize_crop``: the fast path (several times faster; C-ordered arrays only). Both
  passes run one kernel, ``_filter_rows``, that filters along the slow axis: every output
  row is a weighted sum of whole source rows, a loop numba vectorises. The horizontal pass
  runs it on a transposed copy and transposes the result back; the flip is the horizontal
  weight table reversed. Tap counts are padded with zero weights to a multiple of 4, so the
  kernel's loop body has four fixed taps. Exactness: per output value the real taps are
  summed in the same order, from the same float32 zero, as in the twin; a padded tap adds
  ``0 * pixel``, which leaves every nonzero sum unchanged (and a zero sum rounds to 0
  either way); rounding is exact integer arithmetic on the clipped float32 sum.

Every compiled function states ``fastmath=False``: numba otherwise inherits fastmath from
the caller (FFCV compiles its pipeline with fastmath=True), which lets LLVM reorder the
float sums, so results would depend on the caller, and numba's on-disk cache, which keys on
the signature only, would hand either variant to the next process.

OpenCV's ``INTER_AREA``, which FFCV's stock decoders use, is not used: it is neither of the
spec's filters.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uintp

from ..spec import INTERPOLATIONS

NEAREST, BILINEAR, BICUBIC = (INTERPOLATIONS.index(n) for n in ("nearest", "bilinear",
                                                                "bicubic"))
TAP_GROUP = 4  # the fast kernel's taps per loop body; tap tables are padded to a multiple

_compiled = njit(cache=True, fastmath=False)


def filter_code(interpolation: str) -> int:
    """The compiled filter's code of a spec interpolation name."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; one of {INTERPOLATIONS}")
    return INTERPOLATIONS.index(interpolation)


@_compiled
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


@_compiled
def _window(center: float, support: float, in_size: int) -> tuple[int, int]:
    """Source pixels [lo, hi) under the filter centred on ``center``, clipped to the crop."""
    return max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)


@_compiled
def filter_weights(in_size: int, out_size: int, kind: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: first source pixel, tap count, and normalised weights.

    Returns start int64 [out], count int64 [out], weights float32 [out, max_taps] (zero
    beyond each pixel's count).
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
        lo, hi = _window(center, support, in_size)
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


# ------------------------------------------------------------------------------ plain twin
@_compiled
def _to_u8(v: float) -> np.uint8:
    """Round half up and clip to [0, 255], as PIL stores every pass."""
    r = math.floor(v + 0.5)
    return np.uint8(0 if r < 0 else (255 if r > 255 else r))


@_compiled
def _horizontal_simple(src: np.ndarray, top: int, left: int, xs: np.ndarray, xn: np.ndarray,
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


@_compiled
def _vertical_simple(src: np.ndarray, top: int, left: int, ys: np.ndarray, yn: np.ndarray,
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


@_compiled
def resize_crop_simple(src: np.ndarray, top: int, left: int, height: int, width: int,
                       flip: bool, dst: np.ndarray, kind: int) -> None:
    """The plain twin of ``resize_crop`` (same arguments, same result, bit for bit)."""
    out_h, out_w = dst.shape[0], dst.shape[1]
    xs, xn, xw = filter_weights(width, out_w, kind)
    ys, yn, yw = filter_weights(height, out_h, kind)
    if height * out_w <= out_h * width:
        rows = np.empty((height, out_w, 3), np.uint8)
        _horizontal_simple(src, top, left, xs, xn, xw, rows)
        _vertical_simple(rows, 0, 0, ys, yn, yw, dst)
    else:
        cols = np.empty((out_h, width, 3), np.uint8)
        _vertical_simple(src, top, left, ys, yn, yw, cols)
        _horizontal_simple(cols, 0, 0, xs, xn, xw, dst)
    if flip:
        for y in range(out_h):
            for x in range(out_w // 2):
                for c in range(3):
                    a = dst[y, x, c]
                    dst[y, x, c] = dst[y, out_w - 1 - x, c]
                    dst[y, out_w - 1 - x, c] = a


# ------------------------------------------------------------------------------ fast path
@_compiled
def padded_taps(in_size: int, out_size: int, kind: int, flip: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """``filter_weights`` (its twin, bit for bit) with a fixed tap count: start int64 [out]
    and weights float32 [out, taps], taps the largest count rounded up to a multiple of
    TAP_GROUP, zero after each pixel's own taps; rows in reverse order when ``flip`` (a
    mirrored output). Computed directly, without the twin's extra arrays and copy, and
    without its division by a stretch of exactly 1 (which changes nothing).

    A padded tap may point past the source; the kernel clamps its row index, and its weight
    is zero, so it reads a valid pixel and adds nothing.
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = (2.0 if kind == BICUBIC else 1.0) * stretch
    most = 1
    if kind != NEAREST:
        for i in range(out_size):
            lo, hi = _window((i + 0.5) * scale, support, in_size)
            most = max(most, hi - lo)
    taps = (most + TAP_GROUP - 1) // TAP_GROUP * TAP_GROUP
    start = np.empty(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.float32)
    for row in range(out_size):
        i = out_size - 1 - row if flip else row
        center = (i + 0.5) * scale
        if kind == NEAREST:
            start[row] = min(int(center), in_size - 1)
            weights[row, 0] = 1.0
            continue
        lo, hi = _window(center, support, in_size)
        start[row] = lo
        line = weights[row]
        total = 0.0
        for j in range(hi - lo):
            x = j + lo - center + 0.5
            w = _filter(kind, x if stretch == 1.0 else x / stretch)
            line[j] = w
            total += w
        if total != 0.0:
            for j in range(hi - lo):
                line[j] /= total
    return start, weights


@njit(cache=True, fastmath=False, inline="always")
def _round_u8(v: np.float32) -> np.uint8:
    """floor(v + 0.5) clipped to [0, 255], exactly as ``_to_u8``, but in float32 so numba
    vectorises it: after clipping, ``v - trunc(v)`` is exact, so comparing it with 0.5
    decides the rounding without the inexact float32 ``v + 0.5`` (0.49999997 + 0.5 rounds
    to 1.0)."""
    v = min(max(v, np.float32(0.0)), np.float32(255.0))
    t = np.int32(v)
    return np.uint8(t + (1 if v - np.float32(t) >= np.float32(0.5) else 0))


@njit(cache=True, fastmath=False, inline="always")
def _four_taps(a: np.float32, flat: np.ndarray, j: int, r0: int, r1: int, r2: int, r3: int,
               w0: np.float32, w1: np.float32, w2: np.float32, w3: np.float32) -> np.float32:
    """a + w0 * flat[r0 + j] + ... + w3 * flat[r3 + j], added left to right."""
    a += w0 * flat[r0 + j]
    a += w1 * flat[r1 + j]
    a += w2 * flat[r2 + j]
    a += w3 * flat[r3 + j]
    return a


@_compiled
def _filter_rows(src: np.ndarray, top: int, left: int, in_rows: int, starts: np.ndarray,
                 weights: np.ndarray, out: np.ndarray, acc: np.ndarray) -> None:
    """out[i, x] = round(sum_k weights[i, k] * src[top + min(starts[i] + k, in_rows - 1),
    left + x]), the sum in k order from a float32 zero; out uint8 [n, w, 3], src C-ordered
    [H, W, 3] (uint8), acc float32 scratch [>= w * 3] carrying sums between tap groups.

    Indices are unsigned so numba emits no negative-index wraparound, which would stop the
    vectoriser; each group of four taps runs one of four loops, so none has a branch inside.
    """
    n = uintp(out.shape[1] * 3)
    flat = src.reshape(-1)
    flat_out = out.reshape(-1)
    pitch = src.shape[1] * 3
    last = in_rows - 1
    taps = weights.shape[1]
    zero = np.float32(0.0)
    for i in range(out.shape[0]):
        o = uintp(i) * n
        for g in range(0, taps, TAP_GROUP):
            r = starts[i] + g
            r0 = uintp((top + min(r, last)) * pitch + left * 3)
            r1 = uintp((top + min(r + 1, last)) * pitch + left * 3)
            r2 = uintp((top + min(r + 2, last)) * pitch + left * 3)
            r3 = uintp((top + min(r + 3, last)) * pitch + left * 3)
            w0, w1, w2, w3 = weights[i, g], weights[i, g + 1], weights[i, g + 2], weights[i, g + 3]
            first, final = g == 0, g + TAP_GROUP == taps
            if first and final:
                for j in range(n):
                    flat_out[o + j] = _round_u8(
                        _four_taps(zero, flat, j, r0, r1, r2, r3, w0, w1, w2, w3))
            elif first:
                for j in range(n):
                    acc[j] = _four_taps(zero, flat, j, r0, r1, r2, r3, w0, w1, w2, w3)
            elif final:
                for j in range(n):
                    flat_out[o + j] = _round_u8(
                        _four_taps(acc[j], flat, j, r0, r1, r2, r3, w0, w1, w2, w3))
            else:
                for j in range(n):
                    acc[j] = _four_taps(acc[j], flat, j, r0, r1, r2, r3, w0, w1, w2, w3)


@_compiled
def _transpose(src: np.ndarray, top: int, left: int, height: int, width: int,
               out: np.ndarray) -> None:
    """out[x, y] = src[top + y, left + x] (pixels of 3 bytes); src and out C-ordered."""
    flat = src.reshape(-1)
    flat_out = out.reshape(-1)
    pitch = uintp(src.shape[1] * 3)
    q = uintp(0)
    for x in range(width):
        p = uintp(top) * pitch + uintp((left + x) * 3)
        for _ in range(height):
            flat_out[q] = flat[p]
            flat_out[q + uintp(1)] = flat[p + uintp(1)]
            flat_out[q + uintp(2)] = flat[p + uintp(2)]
            q += uintp(3)
            p += pitch


@_compiled
def _filter_columns(src: np.ndarray, top: int, left: int, height: int, width: int,
                    starts: np.ndarray, weights: np.ndarray, out: np.ndarray,
                    acc: np.ndarray) -> None:
    """The horizontal pass: out [height, out_w, 3] from src[top:top+height, left:left+width]
    as transpose, ``_filter_rows``, transpose (two cheap copies buy a vectorised filter)."""
    out_w = out.shape[1]
    columns = np.empty((width, height, 3), np.uint8)
    _transpose(src, top, left, height, width, columns)
    filtered = np.empty((out_w, height, 3), np.uint8)
    _filter_rows(columns, 0, 0, width, starts, weights, filtered, acc)
    _transpose(filtered, 0, 0, out_w, height, out)


@_compiled
def resize_crop(src: np.ndarray, top: int, left: int, height: int, width: int, flip: bool,
                dst: np.ndarray, kind: int) -> None:
    """Resize src[top:top+height, left:left+width] (uint8 [H, W, 3], C-ordered) into dst
    (uint8 [h, w, 3], C-ordered), mirrored left-right when ``flip``.

    Two passes with a uint8 intermediate, in the order that keeps the intermediate smaller
    (this order decides where bicubic overshoot is clipped; the twin uses the same rule).
    The crop is taken first, so the filter is clipped at the crop's edges.
    """
    out_h, out_w = dst.shape[0], dst.shape[1]
    xs, xw = padded_taps(width, out_w, kind, flip)
    ys, yw = padded_taps(height, out_h, kind, False)
    acc = np.empty(max(max(out_w, width), max(out_h, height)) * 3, np.float32)
    if height * out_w <= out_h * width:
        rows = np.empty((height, out_w, 3), np.uint8)
        _filter_columns(src, top, left, height, width, xs, xw, rows, acc)
        _filter_rows(rows, 0, 0, height, ys, yw, dst, acc)
    else:
        cols = np.empty((out_h, width, 3), np.uint8)
        _filter_rows(src, top, left, height, ys, yw, cols, acc)
        _filter_columns(cols, 0, 0, out_h, width, xs, xw, dst, acc)
