"""The compiled twin of ``sampling.sample_image_params`` on the counter stream (numba).

The DALI feed draws a whole batch's parameters in one call, and the FFCV op draws each
sample's inside its compiled loop; neither can afford Python per view. Both run this module,
which replays ``sampling.sample_view_params`` counter by counter on ``counter_stream``'s
stream and writes each view as one ``param_row`` row (float64 [WIDTH]). Tests require the
rows to equal, bitwise, ``param_row.to_rows(sample_image_params(spec, w, h,
CounterRNG(key)))``: the plain Python stays the definition, this file only its fast executor.
Every function is compiled with ``EXACT`` flags (no fastmath, whoever calls it): bitwise
equality is the point.

The spec reaches compiled code through ``spec_arrays(spec)`` only (numbers read from the
spec and from ``sampling.jitter_ranges``; nothing restated here):
    views   float64 [num_views, VIEW_COLUMNS]: scale_lo, scale_hi, blur_p, solarize_p
    common  float64 [COMMON_COLUMNS]: ratio_lo, ratio_hi, flip_p, jitter_p, the (lo, hi)
            bounds of brightness, contrast, saturation and hue, grayscale_p, sigma_lo,
            sigma_hi
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .counter_stream import GOLDEN, MIX1, MIX2, TO_UNIT
from .param_row import COL, WIDTH, to_row
from .draw import JITTER_OPS, ViewParams, jitter_ranges
from ..spec import AugmentationSpec

V_SCALE_LO, V_SCALE_HI, V_BLUR_P, V_SOLARIZE_P = range(4)
VIEW_COLUMNS = 4
C_RATIO_LO, C_RATIO_HI, C_FLIP_P, C_JITTER_P = range(4)
C_JITTER = 4  # lo, hi of each op in JITTER_OPS order: columns 4 .. 11
C_GRAY_P = C_JITTER + 2 * len(JITTER_OPS)
C_SIGMA_LO, C_SIGMA_HI = C_GRAY_P + 1, C_GRAY_P + 2
COMMON_COLUMNS = C_SIGMA_HI + 1


class SpecArrays(NamedTuple):
    """The spec's numbers as compiled code reads them (see the module docstring)."""

    views: np.ndarray
    common: np.ndarray


def spec_arrays(spec: AugmentationSpec) -> SpecArrays:
    """``spec`` -> ``SpecArrays``: the only way the recipe's numbers reach this module."""
    views = np.array([[v.scale[0], v.scale[1], v.blur_p, v.solarize_p] for v in spec.views()],
                     dtype=np.float64).reshape(spec.num_views, VIEW_COLUMNS)
    common = np.empty(COMMON_COLUMNS, dtype=np.float64)
    common[C_RATIO_LO], common[C_RATIO_HI] = spec.ratio
    common[C_FLIP_P], common[C_JITTER_P] = spec.flip_p, spec.jitter.p
    common[C_JITTER:C_GRAY_P] = [x for pair in jitter_ranges(spec) for x in pair]
    common[C_GRAY_P] = spec.grayscale_p
    common[C_SIGMA_LO], common[C_SIGMA_HI] = spec.blur_sigma
    return SpecArrays(views, common)


# Column numbers and the "not jittered / not blurred" values, taken from param_row's own
# encoder so that compiled rows cannot drift from its contract.
_TOP, _LEFT, _HEIGHT, _WIDTH = COL.top, COL.left, COL.height, COL.width
_FLIP, _JITTER, _ORDER0, _FACTOR0 = COL.flip, COL.jitter, COL.order0, COL.brightness
_GRAY, _BLUR, _SIGMA, _SOLARIZE = COL.grayscale, COL.blur, COL.sigma, COL.solarize
_OPS = len(JITTER_OPS)
_BLANK = to_row(ViewParams((0, 0, 0, 0), False, None, False, None, False))
_NO_JITTER = tuple(float(x) for x in _BLANK[_ORDER0:COL.hue + 1])  # order, then factors
_NO_BLUR_SIGMA = float(_BLANK[_SIGMA])

# Explicit, because numba gives a callee that leaves ``fastmath`` unset its CALLER's setting
# (numba issue 7168; numba.core.cpu finalize: ``inherit_if_not_set``) and caches that
# variant on disk for every later process: FFCV compiles its ops with fastmath=True, which
# let LLVM contract ``lo + (hi - lo) * u`` into a fused multiply-add, and the DALI feed then
# loaded the contracted code and drew parameters one ulp off the reference's.
EXACT = {"cache": True, "fastmath": False, "error_model": "python"}

_U64_GOLDEN, _U64_MIX1, _U64_MIX2 = np.uint64(GOLDEN), np.uint64(MIX1), np.uint64(MIX2)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@njit(**EXACT)
def splitmix64_nb(x: np.uint64) -> np.uint64:
    """``counter_stream.splitmix64`` on uint64 (wrapping arithmetic)."""
    z = x + _U64_GOLDEN
    z = (z ^ (z >> _S30)) * _U64_MIX1
    z = (z ^ (z >> _S27)) * _U64_MIX2
    return z ^ (z >> _S31)


@njit(**EXACT)
def unit_nb(key: np.uint64, counter: int) -> float:
    """``counter_stream.unit``."""
    return float(splitmix64_nb(key + np.uint64(counter) * _U64_GOLDEN) >> _S11) * TO_UNIT


@njit(**EXACT)
def sample_key_nb(epoch_key: np.uint64, index: int) -> np.uint64:
    """``counter_stream.sample_key`` from the epoch's key and a dataset index."""
    return splitmix64_nb(np.uint64(epoch_key) ^ np.uint64(index))


@njit(**EXACT)
def batch_keys(epoch_key: np.uint64, indices: np.ndarray) -> np.ndarray:
    """Sample keys of dataset ``indices`` (int64 [n]) in one epoch: uint64 [n]."""
    out = np.empty(indices.shape[0], dtype=np.uint64)
    for i in range(indices.shape[0]):
        out[i] = sample_key_nb(epoch_key, indices[i])
    return out


@njit(**EXACT)
def _integer(key: np.uint64, counter: int, n: int) -> int:
    """``CounterRNG.integers(0, n)`` at ``counter``."""
    return min(int(unit_nb(key, counter) * n), n - 1)


@njit(**EXACT)
def _uniform(key: np.uint64, counter: int, lo: float, hi: float) -> float:
    """``CounterRNG.uniform(lo, hi)`` at ``counter`` (numpy's formula)."""
    return lo + (hi - lo) * unit_nb(key, counter)


@njit(**EXACT)
def _crop_box(width: int, height: int, scale_lo: float, scale_hi: float, ratio_lo: float,
              ratio_hi: float, key: np.uint64, counter: int, row: np.ndarray) -> int:
    """``sampling.sample_crop_box`` into ``row``'s box columns; returns the next counter."""
    area = width * height
    log_lo, log_hi = math.log(ratio_lo), math.log(ratio_hi)
    for _ in range(10):
        target = area * _uniform(key, counter, scale_lo, scale_hi)
        aspect = math.exp(_uniform(key, counter + 1, log_lo, log_hi))
        counter += 2
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            row[_TOP] = _integer(key, counter, height - h + 1)
            row[_LEFT] = _integer(key, counter + 1, width - w + 1)
            row[_HEIGHT], row[_WIDTH] = h, w
            return counter + 2
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w, h = width, int(round(width / ratio_lo))
    elif in_ratio > ratio_hi:
        h, w = height, int(round(height * ratio_hi))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    row[_TOP], row[_LEFT] = (height - h) // 2, (width - w) // 2
    row[_HEIGHT], row[_WIDTH] = h, w
    return counter


@njit(**EXACT)
def _jitter(key: np.uint64, counter: int, common: np.ndarray, row: np.ndarray) -> int:
    """``sampling.sample_jitter`` into ``row``; returns the next counter."""
    applied = unit_nb(key, counter) < common[C_JITTER_P]
    counter += 1
    row[_JITTER] = 1.0 if applied else 0.0
    if not applied:
        for k in range(2 * _OPS):
            row[_ORDER0 + k] = _NO_JITTER[k]
        return counter
    for k in range(_OPS):
        row[_ORDER0 + k] = k
    for i in range(_OPS - 1, 0, -1):  # Fisher-Yates, as CounterRNG.permutation
        j = _integer(key, counter, i + 1)
        counter += 1
        row[_ORDER0 + i], row[_ORDER0 + j] = row[_ORDER0 + j], row[_ORDER0 + i]
    for k in range(_OPS):
        lo, hi = common[C_JITTER + 2 * k], common[C_JITTER + 2 * k + 1]
        row[_FACTOR0 + k] = _uniform(key, counter, lo, hi)
        counter += 1
    return counter


@njit(**EXACT)
def _view_row(key: np.uint64, counter: int, width: int, height: int, view: np.ndarray,
              common: np.ndarray, row: np.ndarray) -> int:
    """``sampling.sample_view_params`` as one param_row row; returns the next counter."""
    counter = _crop_box(width, height, view[V_SCALE_LO], view[V_SCALE_HI], common[C_RATIO_LO],
                        common[C_RATIO_HI], key, counter, row)
    row[_FLIP] = 1.0 if unit_nb(key, counter) < common[C_FLIP_P] else 0.0
    counter = _jitter(key, counter + 1, common, row)
    row[_GRAY] = 1.0 if unit_nb(key, counter) < common[C_GRAY_P] else 0.0
    blur = unit_nb(key, counter + 1) < view[V_BLUR_P]
    sigma = _uniform(key, counter + 2, common[C_SIGMA_LO], common[C_SIGMA_HI])
    row[_BLUR] = 1.0 if blur else 0.0
    row[_SIGMA] = sigma if blur else _NO_BLUR_SIGMA
    row[_SOLARIZE] = 1.0 if unit_nb(key, counter + 3) < view[V_SOLARIZE_P] else 0.0
    return counter + 4


@njit(**EXACT)
def draw_image_rows(key: np.uint64, width: int, height: int, views: np.ndarray,
                    common: np.ndarray, out: np.ndarray) -> int:
    """Every view of one ``width`` x ``height`` image from stream ``key`` into ``out``
    (float64 [num_views, WIDTH]); returns the number of counters consumed.

    From Python pass ``key`` as ``np.uint64``: numba types a plain int as int64, which
    cannot hold half of all keys."""
    key64 = np.uint64(key)
    counter = 0
    for v in range(views.shape[0]):
        counter = _view_row(key64, counter, width, height, views[v], common, out[v])
    return counter


@njit(**EXACT)
def draw_batch_rows(keys: np.ndarray, widths: np.ndarray, heights: np.ndarray,
                    views: np.ndarray, common: np.ndarray) -> np.ndarray:
    """Rows of a batch: keys uint64 [n], widths / heights int64 [n] ->
    float64 [n, num_views, WIDTH]."""
    out = np.empty((keys.shape[0], views.shape[0], WIDTH), dtype=np.float64)
    for i in range(keys.shape[0]):
        draw_image_rows(keys[i], widths[i], heights[i], views, common, out[i])
    return out
