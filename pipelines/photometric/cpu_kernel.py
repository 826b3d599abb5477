"""The spec's photometric ops + normalisation of one crop, fused and compiled for the CPU.

The torch tensor ops (``pipelines/photometric/torch_ops.py``) cost the FFCV executor five times its
crops: every op is a full pass over float32 images with temporaries in memory. This kernel
computes their semantics (listed in their docstring) with the same float32 formulas, but
streams each view through the cache a row at a time:

    sweep 1 (views with jitter)  uint8 HWC row -> planar float32 row, the jitter ops before
        contrast, the row's luma sum; rows kept in ``work`` [3, S, S] (contrast blends toward
        the mean luma of the whole current image).
    sweep 2  contrast from ``work`` (without jitter: the uint8 row), the jitter ops after it,
        grayscale; then solarize + normalise straight into ``out`` [3, S, S], or the
        horizontal blur into a ring of 2r + 1 rows, from which each output row is blurred
        vertically, solarized, normalised and written once its last input row exists.

Each op is a branch-free loop over one contiguous row, which LLVM vectorises; the op order is
dispatched per row, not per pixel. Nothing is allocated per view (``make_scratch``;
``photometric_batch`` allocates once per call). Parameter rows follow
``pipelines/sampling/param_row.py``; box and flip are ignored (the crop arrives resized and flipped).
Rounding differs from torch_ops only in order (luma mean, fused multiply-adds) and in the
hue wheel's ``k mod 6`` taken with ``k * (1/6)``: where that wraps differently, both give a
weight of 0. Twin tests: tests/pipelines/photometric/test_cpu_kernel.py.

Numba specifics that decide speed: row helpers are inlined (``inline="always"``), which
drops the atomic reference counts of the row slices they take; indices stay provably >= 0
(negative-index wraparound blocks vectorisation); the uint8 row is indexed flat (2-d
indexing uses a runtime stride, which LLVM vectorises only when it is 1).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..sampling.param_row import COL
from .constants import KernelConsts, kernel_consts  # noqa: F401  (re-exported)
from .torch_ops import BRIGHTNESS, CONTRAST, HUE, LUMA, SATURATION

_F = np.float32
_LR, _LG, _LB = (_F(w) for w in LUMA)
_ZERO, _ONE, _TWO, _FOUR, _SIX = _F(0.0), _F(1.0), _F(2.0), _F(4.0), _F(6.0)
_LEVELS = _F(255.0)
_SIXTH = _F(1.0 / 6.0)
_MIN_CHROMA = _F(1e-12)  # the hue's division guard, as torch_ops
# hsv -> rgb: channel = V - C * clamp(min(k, 4 - k), 0, 1), k = (offset + 6 h) mod 6
_K_R, _K_G, _K_B = _F(5.0), _F(3.0), _F(1.0)
_JITTER, _ORDER0, _HUE_COL, _GRAY, _BLUR, _SIGMA, _SOLARIZE = (
    COL.jitter, COL.order0, COL.hue, COL.grayscale, COL.blur, COL.sigma, COL.solarize)
_FACTOR = (COL.brightness, COL.contrast, COL.saturation)  # indexed by JITTER_OPS index
assert (BRIGHTNESS, CONTRAST, SATURATION) == (0, 1, 2) and HUE == 3


def scratch_size(size: int, max_radius: int) -> int:
    """float32 elements of scratch for S = ``size`` and blur half-width up to ``max_radius``
    (R): work [3, S, S], then row buffers (``_line``): the current row, the blur ring of
    2R + 1 rows and the vertical accumulator, and the taps [2R + 1]."""
    return int(_scratch_need(size, max_radius))


def make_scratch(size: int, consts: KernelConsts) -> np.ndarray:
    """Scratch for ``photometric_view`` on S = ``size`` views of any sigma in the spec."""
    return np.empty(scratch_size(size, consts.max_radius), np.float32)


# ------------------------------------------------------------------------------ row ops
@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _clip(v: float) -> float:
    return _ZERO if v < _ZERO else (_ONE if v > _ONE else v)


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _wheel(k: float) -> float:
    """clamp(min(k, 4 - k), 0, 1) with k taken mod 6: one HSV -> RGB channel weight."""
    k = k - _SIX * np.floor(k * _SIXTH)  # near a multiple of 6 either wrap gives w = 0
    w = k if k < _FOUR - k else _FOUR - k
    return _clip(w)


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _load(rgb: np.ndarray, r: np.ndarray, g: np.ndarray, b: np.ndarray) -> None:
    """uint8 [3 S] (one HWC row, flat) -> three float32 [S] planes in [0, 1]; a division,
    as torch_ops (x * (1/255) would differ in the last bit for half the levels)."""
    for i in range(r.shape[0]):
        r[i] = _F(rgb[3 * i]) / _LEVELS
        g[i] = _F(rgb[3 * i + 1]) / _LEVELS
        b[i] = _F(rgb[3 * i + 2]) / _LEVELS


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _brightness(r: np.ndarray, g: np.ndarray, b: np.ndarray, f: float) -> None:
    for i in range(r.shape[0]):
        r[i] = _clip(r[i] * f)
        g[i] = _clip(g[i] * f)
        b[i] = _clip(b[i] * f)


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _contrast(r: np.ndarray, g: np.ndarray, b: np.ndarray, dr: np.ndarray, dg: np.ndarray,
              db: np.ndarray, f: float, m: float) -> None:
    """Blend toward the image's mean luma ``m``; out of place (sweep 1's rows -> current)."""
    for i in range(r.shape[0]):
        dr[i] = _clip(m + f * (r[i] - m))
        dg[i] = _clip(m + f * (g[i] - m))
        db[i] = _clip(m + f * (b[i] - m))


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _saturation(r: np.ndarray, g: np.ndarray, b: np.ndarray, f: float) -> None:
    for i in range(r.shape[0]):
        rr, gg, bb = r[i], g[i], b[i]
        y = rr * _LR + gg * _LG + bb * _LB
        r[i] = _clip(y + f * (rr - y))
        g[i] = _clip(y + f * (gg - y))
        b[i] = _clip(y + f * (bb - y))


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _hue(r: np.ndarray, g: np.ndarray, b: np.ndarray, shift6: float) -> None:
    """HSV hue rotation by ``shift6`` sextants; V and S are kept (torch_ops.adjust_hue)."""
    for i in range(r.shape[0]):
        rr, gg, bb = r[i], g[i], b[i]
        v = rr if rr > gg else gg
        v = v if v > bb else bb
        mn = rr if rr < gg else gg
        mn = mn if mn < bb else bb
        c = v - mn
        if v == rr:
            d, off = gg - bb, _ZERO
        elif v == gg:
            d, off = bb - rr, _TWO
        else:
            d, off = rr - gg, _FOUR
        h6 = d / (c if c > _MIN_CHROMA else _MIN_CHROMA) + (off + shift6)
        r[i] = v - c * _wheel(h6 + _K_R)
        g[i] = v - c * _wheel(h6 + _K_G)
        b[i] = v - c * _wheel(h6 + _K_B)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _luma_sum(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> float:
    """Sum of the row's luma. Reassociated, so it vectorises (float32 lanes over one row;
    rows are summed in float64). Not inlined: inlining would drop its fastmath flags."""
    s = _ZERO
    for i in range(r.shape[0]):
        s += r[i] * _LR + g[i] * _LG + b[i] * _LB
    return s


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _grayscale(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> None:
    for i in range(r.shape[0]):
        y = r[i] * _LR + g[i] * _LG + b[i] * _LB
        r[i] = y
        g[i] = y
        b[i] = y


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _finish(x: np.ndarray, dst: np.ndarray, solarize: bool, at: float, scale: float,
            shift: float) -> None:
    """dst = normalise(solarize(x)); dst may be x."""
    if solarize:
        for i in range(x.shape[0]):
            v = x[i]
            if v >= at:
                v = v + (_ONE - _TWO * v)
            dst[i] = v * scale + shift
    else:
        for i in range(x.shape[0]):
            dst[i] = x[i] * scale + shift


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _jitter_ops(r: np.ndarray, g: np.ndarray, b: np.ndarray, row: np.ndarray, first: int,
                stop: int) -> None:
    """The jitter ops at positions first..stop-1 of the row's order, except contrast (which
    the caller places between its two sweeps), on one row."""
    for k in range(first, stop):
        op = int(row[_ORDER0 + k])
        if op == HUE:
            _hue(r, g, b, _SIX * _F(row[_HUE_COL]))
        elif op == BRIGHTNESS:
            _brightness(r, g, b, _F(row[_FACTOR[0]]))
        elif op == SATURATION:
            _saturation(r, g, b, _F(row[_FACTOR[2]]))


# ------------------------------------------------------------------------------ blur
@njit(cache=True, nogil=True, fastmath=False)
def _radius(sigma: float) -> int:
    """Half-width for float32 ``sigma``: the smaller of torch_ops' mask (float32
    ceil(3 sigma)) and its window (blur_radius in float64), both at least 1."""
    return max(1, min(int(math.ceil(_F(3.0) * sigma)), int(math.ceil(3.0 * float(sigma)))))


@njit(cache=True, nogil=True, fastmath=False)
def _gaussian_taps(sigma: float, r: int, taps: np.ndarray) -> None:
    """taps[:2r + 1] = the normalised gaussian, in float32 as torch_ops computes it."""
    total = _ZERO
    for j in range(2 * r + 1):
        t = _F(j - r) / sigma
        taps[j] = np.exp(_F(-0.5) * (t * t))
        total += taps[j]
    for j in range(2 * r + 1):
        taps[j] = taps[j] / total


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _taps(acc: np.ndarray, s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, s3: np.ndarray,
          w0: float, w1: float, w2: float, w3: float, k: int) -> None:
    """acc += s0 w0 + ... for the first k (1..4) sources, added one tap at a time: the
    rounding of k single-tap passes with fewer loads and stores of acc."""
    if k == 4:
        for i in range(acc.shape[0]):
            acc[i] = (((acc[i] + s0[i] * w0) + s1[i] * w1) + s2[i] * w2) + s3[i] * w3
    elif k == 3:
        for i in range(acc.shape[0]):
            acc[i] = ((acc[i] + s0[i] * w0) + s1[i] * w1) + s2[i] * w2
    elif k == 2:
        for i in range(acc.shape[0]):
            acc[i] = (acc[i] + s0[i] * w0) + s1[i] * w1
    else:
        for i in range(acc.shape[0]):
            acc[i] = acc[i] + s0[i] * w0


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _pad(line: np.ndarray, r: int, size: int) -> None:
    """Replicate the edge pixels of line[r:r + size] into the r cells on either side."""
    for i in range(r):
        line[i] = line[r]
        line[r + size + i] = line[r + size - 1]


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _hblur(src: np.ndarray, dst: np.ndarray, taps: np.ndarray, r: int, span: int) -> None:
    """dst[o] = sum_j src[o + j] taps[j] for o < span: the horizontal blur of padded rows
    laid end to end (outputs between two rows are junk that nothing reads)."""
    nt = 2 * r + 1
    out = dst[:span]
    out[:] = _ZERO  # 0 + x is x: the first tap lands exactly
    for j in range(0, nt, 4):
        k = min(4, nt - j)  # taps in this group; unused slots repeat the last one
        q1, q2, q3 = j + min(1, k - 1), j + min(2, k - 1), j + min(3, k - 1)
        _taps(out, src[j:j + span], src[q1:q1 + span], src[q2:q2 + span], src[q3:q3 + span],
              taps[j], taps[q1], taps[q2], taps[q3], k)


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _ring_row(ring: np.ndarray, y: int, size: int) -> np.ndarray:
    """Slot of horizontally blurred row y, clamped to the image (edge rows replicated)."""
    return ring[min(max(y, 0), size - 1) % ring.shape[0]]


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _vblur(ring: np.ndarray, y: int, size: int, taps: np.ndarray, r: int, span: int,
           acc: np.ndarray) -> None:
    """acc[:span] = output row y blurred vertically from the ring of horizontally blurred
    rows (row k in slot k % len(ring))."""
    nt = 2 * r + 1
    out = acc[:span]
    out[:] = _ZERO
    for j in range(0, nt, 4):
        k = min(4, nt - j)
        q1, q2, q3 = j + min(1, k - 1), j + min(2, k - 1), j + min(3, k - 1)
        y0 = y - r
        _taps(out, _ring_row(ring, y0 + j, size)[:span], _ring_row(ring, y0 + q1, size)[:span],
              _ring_row(ring, y0 + q2, size)[:span], _ring_row(ring, y0 + q3, size)[:span],
              taps[j], taps[q1], taps[q2], taps[q3], k)


# ------------------------------------------------------------------------------ entry points
@njit(cache=True, nogil=True, fastmath=False)
def _line(size: int, r: int) -> int:
    """Length of a row buffer: three padded planes of pitch S + 2r, plus slack so that
    vector loops can run to a multiple of 32 elements (no scalar remainder loop)."""
    return 3 * (size + 2 * r) + 2 * r + 32


@njit(cache=True, nogil=True, fastmath=False)
def _scratch_need(size: int, r: int) -> int:
    return 3 * size * size + (2 * r + 3) * _line(size, r) + 2 * r + 1


@njit(cache=True, nogil=True, fastmath=False)
def _contrast_position(row: np.ndarray) -> int:
    """Where contrast sits in the row's jitter order; raises unless the order is a
    permutation of the four ops (a malformed row would otherwise skip ops silently)."""
    seen, kc = 0, -1
    for k in range(4):
        op = int(row[_ORDER0 + k])
        if op < 0 or op > 3:
            raise ValueError("parameter row: jitter order is not a permutation of 0..3")
        seen |= 1 << op
        if op == CONTRAST:
            kc = k
    if seen != 15:
        raise ValueError("parameter row: jitter order is not a permutation of 0..3")
    return kc


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _emit(ring: np.ndarray, y: int, size: int, taps: np.ndarray, r: int, span: int, acc: np.ndarray,
          pitch: int, planes: int, out: np.ndarray, solarize: bool, at: float, norm: np.ndarray
          ) -> None:
    """Output row y of a blurred view: vertical blur, solarize, normalise, into out[:, y]."""
    _vblur(ring, y, size, taps, r, span, acc)
    for c in range(3):
        lo = pitch * c if planes == 3 else 0
        _finish(acc[lo:lo + size], out[c, y], solarize, at, norm[0, c], norm[1, c])


@njit(cache=True, nogil=True, fastmath=False)
def photometric_view(src: np.ndarray, row: np.ndarray, norm: np.ndarray, solarize_at: float,
                     out: np.ndarray, scratch: np.ndarray) -> None:
    """One view: src uint8 [S, S, 3] (C-contiguous HWC crop, resized and flipped), row
    float64 [WIDTH] (param_row), norm float32 [2, 3] and solarize_at (``kernel_consts``),
    out float32 [3, S, S] <- normalised CHW, scratch float32 [>= scratch_size(S, radius)].
    """
    size = src.shape[0]
    if src.shape[1] != size or src.shape[2] != 3 or out.shape != (3, size, size):
        raise ValueError("photometric_view: src must be [S, S, 3] and out [3, S, S]")
    solarize_at = _F(solarize_at)
    jitter = row[_JITTER] != 0.0
    gray, blur, solarize = row[_GRAY] != 0.0, row[_BLUR] != 0.0, row[_SOLARIZE] != 0.0
    sigma = _F(row[_SIGMA])
    r = _radius(sigma) if blur else 0
    if scratch.shape[0] < _scratch_need(size, r):
        raise ValueError("photometric_view: scratch too small for this size and blur sigma")
    pitch, nt, line = size + 2 * r, 2 * r + 1, _line(size, r)
    plane = size * size
    work = scratch[:3 * plane].reshape((3, size, size))
    at = 3 * plane
    cur = scratch[at:at + line]  # the current row: planes at pitch, padded by r each side
    cur[3 * pitch:] = _ZERO  # slack read by junk outputs: keep it finite
    at += line
    ring = scratch[at:at + nt * line].reshape((nt, line))
    at += nt * line
    acc = scratch[at:at + line]
    at += line
    taps = scratch[at:at + nt]
    if blur:
        _gaussian_taps(sigma, r, taps)
    flat = src.reshape(-1)
    pr = cur[r:r + size]
    pg = cur[pitch + r:pitch + r + size]
    pb = cur[2 * pitch + r:2 * pitch + r + size]
    planes = 1 if gray else 3  # a gray image is blurred once
    span = (planes * pitch - 2 * r + 31) // 32 * 32  # outputs the blur computes per row

    kc, mean = 0, _ZERO
    if jitter:  # sweep 1: the ops before contrast, and the mean luma contrast needs
        kc = _contrast_position(row)
        total = 0.0
        for y in range(size):
            wr, wg, wb = work[0, y], work[1, y], work[2, y]
            _load(flat[3 * size * y:3 * size * (y + 1)], wr, wg, wb)
            _jitter_ops(wr, wg, wb, row, 0, kc)
            total += _luma_sum(wr, wg, wb)
        mean = _F(total / plane)

    for y in range(size):  # sweep 2
        if jitter:
            _contrast(work[0, y], work[1, y], work[2, y], pr, pg, pb,
                      _F(row[_FACTOR[1]]), mean)
            _jitter_ops(pr, pg, pb, row, kc + 1, 4)
        else:
            _load(flat[3 * size * y:3 * size * (y + 1)], pr, pg, pb)
        if gray:
            _grayscale(pr, pg, pb)
        if not blur:
            _finish(pr, out[0, y], solarize, solarize_at, norm[0, 0], norm[1, 0])
            _finish(pg, out[1, y], solarize, solarize_at, norm[0, 1], norm[1, 1])
            _finish(pb, out[2, y], solarize, solarize_at, norm[0, 2], norm[1, 2])
            continue
        for c in range(planes):
            _pad(cur[c * pitch:(c + 1) * pitch], r, size)
        _hblur(cur, ring[y % nt], taps, r, span)
        if y >= r:  # output row y - r has all its input rows now
            _emit(ring, y - r, size, taps, r, span, acc, pitch, planes, out, solarize,
                  solarize_at, norm)
    if blur:
        for y in range(max(0, size - r), size):
            _emit(ring, y, size, taps, r, span, acc, pitch, planes, out, solarize,
                  solarize_at, norm)


@njit(cache=True, nogil=True, fastmath=False)
def _max_radius(rows: np.ndarray) -> int:
    r = 0
    for i in range(rows.shape[0]):
        if rows[i, _BLUR] != 0.0:
            r = max(r, _radius(_F(rows[i, _SIGMA])))
    return r


@njit(cache=True, nogil=True, fastmath=False)
def photometric_batch(images: np.ndarray, rows: np.ndarray, norm: np.ndarray, solarize_at: float,
                      out: np.ndarray) -> None:
    """images uint8 [n, S, S, 3], rows float64 [n, WIDTH] -> out float32 [n, 3, S, S].

    Sequential on purpose: it runs inside FFCV's parallel decode loop. Scratch is allocated
    once per call, sized for the widest blur among the rows."""
    scratch = np.empty(_scratch_need(images.shape[1], _max_radius(rows)), np.float32)
    for i in range(images.shape[0]):
        photometric_view(images[i], rows[i], norm, solarize_at, out[i], scratch)
