"""Counter-based randomness for the compiled crop op, and its plain-Python twin.

The FFCV op runs in numba, in parallel, with no Python in the loop, so it cannot call
``pipelines.sampling``'s numpy generators. It draws from a counter-based stream instead:
uniform number ``k`` of a sample is ``splitmix64(key + k * GOLDEN)``, where the key hashes
(seed, global rank, epoch, dataset index). Results are therefore independent of batch
composition, thread count and timing.

The crop box algorithm is ``pipelines.sampling.sample_crop_box`` itself: ``CounterRNG``
feeds it this stream through the two methods it uses (``uniform``, ``integers``), and the
compiled ``crop_box`` draws the same numbers in the same order. Tests check that both give
the same boxes. View ``v`` of a sample uses counters ``v * VIEW_STRIDE ...``: up to 22 for
the box (ten tries of two draws, then top and left) and ``FLIP_SLOT`` for the flip.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..sampling import sample_crop_box
from ..spec import AugmentationSpec

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
VIEW_STRIDE = 32  # counters reserved per view
FLIP_SLOT = 31    # counter (within a view's block) of the flip draw
_TO_UNIT = 1.0 / float(1 << 53)


# ----------------------------------------------------------------------------- plain Python
def splitmix64(x: int) -> int:
    """SplitMix64 (Steele, Lea, Flood 2014): one step of the generator on a 64-bit state."""
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def epoch_key(seed: int, rank: int, epoch: int) -> int:
    """Key of one (seed, global rank, epoch); a sample's key adds its dataset index."""
    key = splitmix64(int(seed) & MASK64)
    for part in (rank, epoch):
        key = splitmix64(key ^ (int(part) & MASK64))
    return key


def sample_key(seed: int, rank: int, epoch: int, index: int) -> int:
    return splitmix64(epoch_key(seed, rank, epoch) ^ (int(index) & MASK64))


def unit(key: int, counter: int) -> float:
    """Uniform draw number ``counter`` of stream ``key``, in [0, 1) with 53 random bits."""
    return (splitmix64((key + counter * GOLDEN) & MASK64) >> 11) * _TO_UNIT


class CounterRNG:
    """The counter stream behind the two numpy Generator methods sample_crop_box uses."""

    def __init__(self, key: int, counter: int = 0) -> None:
        self.key, self.counter = key, counter

    def _next(self) -> float:
        u = unit(self.key, self.counter)
        self.counter += 1
        return u

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._next()  # numpy's formula

    def integers(self, low: int, high: int) -> int:
        return low + min(int(self._next() * (high - low)), high - low - 1)


def view_boxes(spec: AugmentationSpec, width: int, height: int, key: int
               ) -> list[tuple[tuple[int, int, int, int], bool]]:
    """The plain twin of the compiled op's geometry: (box, flip) of every view of a sample
    with stream ``key``; boxes are (top, left, height, width)."""
    out = []
    for v, view in enumerate(spec.views()):
        base = v * VIEW_STRIDE
        box = sample_crop_box(width, height, view.scale, spec.ratio, CounterRNG(key, base))
        out.append((box, unit(key, base + FLIP_SLOT) < spec.flip_p))
    return out


# ----------------------------------------------------------------------------- compiled
_U64_GOLDEN, _U64_MIX1, _U64_MIX2 = np.uint64(GOLDEN), np.uint64(_MIX1), np.uint64(_MIX2)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@njit(cache=True)
def splitmix64_nb(x: np.uint64) -> np.uint64:
    z = x + _U64_GOLDEN
    z = (z ^ (z >> _S30)) * _U64_MIX1
    z = (z ^ (z >> _S27)) * _U64_MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def unit_nb(key: np.uint64, counter: int) -> float:
    return float(splitmix64_nb(key + np.uint64(counter) * _U64_GOLDEN) >> _S11) * _TO_UNIT


@njit(cache=True)
def crop_box(width: int, height: int, scale_lo: float, scale_hi: float, ratio_lo: float,
             ratio_hi: float, key: np.uint64, counter: int) -> tuple[int, int, int, int]:
    """``sampling.sample_crop_box`` on the counter stream: (top, left, height, width)."""
    area = width * height
    log_lo, log_hi = math.log(ratio_lo), math.log(ratio_hi)
    for _ in range(10):
        target = area * (scale_lo + (scale_hi - scale_lo) * unit_nb(key, counter))
        aspect = math.exp(log_lo + (log_hi - log_lo) * unit_nb(key, counter + 1))
        counter += 2
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(unit_nb(key, counter) * (height - h + 1)), height - h)
            left = min(int(unit_nb(key, counter + 1) * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w, h = width, int(round(width / ratio_lo))
    elif in_ratio > ratio_hi:
        h, w = height, int(round(height * ratio_hi))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w
