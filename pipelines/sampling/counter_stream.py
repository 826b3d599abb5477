"""The project's one random stream: counter-based, keyed per sample, plain Python + numpy.

Every executor (PIL reference, DALI feed, FFCV op, evaluation probe) draws a sample's random
numbers from the same stream, so one (seed, rank, epoch, index) gives the same crops, flips
and photometric parameters whatever executes them. Uniform number ``k`` of stream ``key`` is
``splitmix64(key + k * GOLDEN)``: any draw can be computed without the ones before it, from
compiled code (``pipelines.sampling.compiled_draw``) with no state to carry, and results do not
depend on batch composition, thread count or timing.

A sample's key hashes (seed, global rank, epoch, dataset index) in two steps: ``epoch_key``
once per (seed, rank, epoch), then ``sample_key`` mixes in the index, so compiled code that
holds the epoch key derives every sample's key with one more hash.

``CounterRNG`` walks one stream sequentially behind the numpy ``Generator`` methods the
samplers call (``random``, ``uniform``, ``integers``, ``permutation``), one counter per
uniform draw. This module must not import numba: the reference executor runs without it.
"""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, SplitMix64's increment
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
TO_UNIT = 1.0 / float(1 << 53)  # 53 random bits -> [0, 1)


def splitmix64(x: int) -> int:
    """SplitMix64 (Steele, Lea, Flood 2014): one step of the generator on a 64-bit state."""
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def epoch_key(seed: int, rank: int, epoch: int) -> int:
    """Key of one (seed, global rank, epoch); a sample's key adds its dataset index."""
    key = splitmix64(int(seed) & MASK64)
    for part in (rank, epoch):
        key = splitmix64(key ^ (int(part) & MASK64))
    return key


def sample_key(seed: int, rank: int, epoch: int, index: int) -> int:
    """Key of sample ``index``'s stream in (seed, global rank, epoch)."""
    return splitmix64(epoch_key(seed, rank, epoch) ^ (int(index) & MASK64))


def unit(key: int, counter: int) -> float:
    """Uniform draw number ``counter`` of stream ``key``, in [0, 1) with 53 random bits."""
    return (splitmix64((key + counter * GOLDEN) & MASK64) >> 11) * TO_UNIT


class CounterRNG:
    """One counter stream behind the numpy ``Generator`` methods the samplers use.

    Each method consumes one counter per uniform it needs (``permutation(n)``: n - 1), in
    call order, so compiled code can replay a sampler by walking the same counters.
    Formulas: ``uniform`` is numpy's ``low + (high - low) * u``; ``integers`` scales ``u``
    to the half-open range (clamped below ``high`` against rounding); ``permutation`` is a
    Fisher-Yates shuffle drawing ``integers(0, i + 1)`` for i = n-1 .. 1.
    """

    def __init__(self, key: int, counter: int = 0) -> None:
        self.key, self.counter = int(key) & MASK64, counter

    def random(self) -> float:
        """One uniform in [0, 1)."""
        u = unit(self.key, self.counter)
        self.counter += 1
        return u

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """One uniform in [low, high)."""
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int | None = None) -> int:
        """One integer in [low, high) (numpy's convention: [0, low) when high is None)."""
        if high is None:
            low, high = 0, low
        if high <= low:
            raise ValueError(f"integers: empty range [{low}, {high})")
        n = high - low
        return low + min(int(self.random() * n), n - 1)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of range(n): int64 [n]."""
        out = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.integers(0, i + 1)
            out[i], out[j] = out[j], out[i]
        return np.array(out, dtype=np.int64)
