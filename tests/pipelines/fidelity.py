"""Statistical and image checks shared by every executor's fidelity tests.

The reference (PIL), DALI and FFCV executors are all held to the same spec with these
helpers: import them as ``from tests.pipelines.fidelity import assert_rate, ...`` (the repo
root must be on ``sys.path``, as it is for ``python3 -m pytest`` run from the root).

Tolerances, stated once:
- rates (flip, grayscale, jitter, blur, solarize): the observed count of ``n`` Bernoulli(p)
  draws must lie within ``Z_RATE`` binomial standard deviations of ``n * p``; p = 0 and
  p = 1 are exact (no tolerance). With Z_RATE = 4 a correct executor fails with probability
  about 6e-5 per check (tests use fixed seeds, so a pass is reproducible); with n = 1000
  draws a probability off by about 0.1 (at p = 0.5) is caught.
- crop boxes: every box lies inside the image; at most ``MAX_FALLBACK_RATE`` of them fall
  outside the spec's scale/ratio ranges (the sampler's centred fallback); the distributions
  of the area fraction and of log(aspect ratio) match those of ``pipelines.sampling``'s
  sampler (simulated) under a two-sample Kolmogorov-Smirnov test at level ``KS_ALPHA``.
- images: compared in pixel units (0..255) by mean, 99th percentile and maximum of the
  absolute difference; each caller states its own bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipelines.sampling import sample_crop_box

Z_RATE = 4.0
KS_ALPHA = 1e-4
MAX_FALLBACK_RATE = 0.01


# ------------------------------------------------------------------------------ rates
@dataclass(frozen=True)
class RateCheck:
    """An observed Bernoulli count against the spec's probability."""

    name: str
    successes: int
    trials: int
    expected: float
    tolerance: float  # allowed |successes - trials * expected|, in counts

    @property
    def observed(self) -> float:
        return self.successes / max(1, self.trials)

    @property
    def ok(self) -> bool:
        return abs(self.successes - self.trials * self.expected) <= self.tolerance + 1e-9

    def __str__(self) -> str:
        return (f"{self.name}: {self.successes}/{self.trials} = {self.observed:.4f}, "
                f"spec p = {self.expected:.4f} (allowed +-{self.tolerance:.1f} counts)")


def binomial_tolerance(trials: int, p: float, z: float = Z_RATE) -> float:
    """Allowed deviation of a Binomial(trials, p) count from its mean: ``z`` std devs."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return z * math.sqrt(trials * p * (1.0 - p))


def check_rate(flags: Sequence[bool] | np.ndarray, p: float, name: str,
               z: float = Z_RATE) -> RateCheck:
    """A RateCheck of boolean ``flags`` (one per draw) against probability ``p``."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    n = int(flags.size)
    if n == 0:
        raise ValueError(f"{name}: no draws to check")
    return RateCheck(name, int(flags.sum()), n, float(p), binomial_tolerance(n, p, z))


def assert_rates(checks: Sequence[RateCheck]) -> None:
    """Raise one AssertionError listing every failed check (all checks are shown)."""
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "\n  ".join(str(c) for c in checks)
        raise AssertionError(f"{len(failed)} rate(s) outside binomial tolerance:\n  {lines}")


def assert_rate(flags: Sequence[bool] | np.ndarray, p: float, name: str,
                z: float = Z_RATE) -> None:
    assert_rates([check_rate(flags, p, name, z)])


def assert_view_rates(flags: np.ndarray, expected: Sequence[float], name: str,
                      z: float = Z_RATE) -> None:
    """Per-view rates: ``flags`` [num_draws, num_views] against ``expected`` [num_views]."""
    flags = np.asarray(flags, dtype=bool)
    if flags.ndim != 2 or flags.shape[1] != len(expected):
        raise ValueError(f"{name}: flags must be [draws, {len(expected)}], got {flags.shape}")
    assert_rates([check_rate(flags[:, v], p, f"{name} view {v}", z)
                  for v, p in enumerate(expected)])


# ------------------------------------------------------------------------------ crop boxes
def box_fractions(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Area fraction and log(width/height) of boxes [N, 4] given as (top, left, h, w)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = boxes[:, 2], boxes[:, 3]
    return h * w / (width * height), np.log(w / h)


def in_spec(boxes: np.ndarray, width: int, height: int, scale: tuple[float, float],
            ratio: tuple[float, float]) -> np.ndarray:
    """[N] bool: the box could come from an in-range (area, ratio) draw up to int rounding.

    A draw (target area A, aspect a) becomes w = round(sqrt(A a)), h = round(sqrt(A / a)),
    so w and h are each within 0.5 of the exact values; the check widens the ranges by that.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = boxes[:, 2], boxes[:, 3]
    area = width * height
    area_ok = ((h + 0.5) * (w + 0.5) >= scale[0] * area) & ((h - 0.5) * (w - 0.5) <= scale[1] * area)
    ratio_ok = ((w + 0.5) / np.maximum(h - 0.5, 1e-9) >= ratio[0]) & ((w - 0.5) / (h + 0.5) <= ratio[1])
    return area_ok & ratio_ok


def reference_box_fractions(width: int, height: int, scale: tuple[float, float],
                            ratio: tuple[float, float], n: int = 20000, seed: int = 1234
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(area fraction, log ratio) of ``n`` boxes from the spec's own sampler (the oracle)."""
    rng = np.random.default_rng(seed)
    boxes = np.array([sample_crop_box(width, height, scale, ratio, rng) for _ in range(n)])
    return box_fractions(boxes, width, height)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| over all x."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """Asymptotic critical value of the two-sample KS statistic at level ``alpha``."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def assert_crop_boxes(boxes: np.ndarray, width: int, height: int, scale: tuple[float, float],
                      ratio: tuple[float, float], name: str = "crop",
                      max_fallback_rate: float = MAX_FALLBACK_RATE, alpha: float = KS_ALPHA
                      ) -> None:
    """Check boxes [N, 4] (top, left, h, w) drawn for a width x height image against the spec.

    Inside the image, mostly in range, and distributed as the spec's sampler distributes them.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    top, left, h, w = boxes.T
    outside = (top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > height) | (left + w > width)
    assert not outside.any(), f"{name}: {int(outside.sum())} boxes leave the {width}x{height} image"
    out_of_range = int((~in_spec(boxes, width, height, scale, ratio)).sum())
    allowed = max_fallback_rate * len(boxes)
    assert out_of_range <= allowed, (f"{name}: {out_of_range}/{len(boxes)} boxes outside scale "
                                     f"{scale} / ratio {ratio} (allowed {allowed:.1f})")
    area, log_ratio = box_fractions(boxes, width, height)
    ref_area, ref_log_ratio = reference_box_fractions(width, height, scale, ratio)
    crit = ks_critical(len(area), len(ref_area), alpha)
    for what, obs, ref in (("area fraction", area, ref_area),
                           ("log aspect ratio", log_ratio, ref_log_ratio)):
        d = ks_statistic(obs, ref)
        assert d <= crit, (f"{name}: {what} distribution differs from the spec's sampler "
                           f"(KS D = {d:.4f} > {crit:.4f} at alpha {alpha}, n = {len(obs)})")


# ------------------------------------------------------------------------------ images
@dataclass(frozen=True)
class DiffStats:
    """Absolute differences between two images, in pixel units (0..255)."""

    mean: float
    p99: float
    max: float

    def __str__(self) -> str:
        return f"mean {self.mean:.3f}, p99 {self.p99:.3f}, max {self.max:.3f}"


def to_pixels(x: torch.Tensor | np.ndarray, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> np.ndarray:
    """A view as float64 pixels 0..255 with channels last: [..., H, W, 3].

    Tensors are channels-first [..., 3, H, W]: normalised (pass the spec's ``mean``/``std``),
    float in [0, 1] (no mean/std) or uint8. Arrays (numpy, PIL via np.asarray) are
    channels-last: uint8, or float in [0, 1].
    """
    if isinstance(x, torch.Tensor):
        is_uint8 = x.dtype == torch.uint8
        a = x.detach().to("cpu", torch.float64).numpy()
        if mean is not None and std is not None:
            a = a * np.asarray(std).reshape(3, 1, 1) + np.asarray(mean).reshape(3, 1, 1)
        return np.moveaxis(a, -3, -1) * (1.0 if is_uint8 else 255.0)
    a = np.asarray(x)
    return a.astype(np.float64) if a.dtype == np.uint8 else a.astype(np.float64) * 255.0


def diff_stats(actual: np.ndarray, expected: np.ndarray) -> DiffStats:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    d = np.abs(actual - expected)
    return DiffStats(float(d.mean()), float(np.percentile(d, 99)), float(d.max()))


def assert_images_close(actual: np.ndarray, expected: np.ndarray, mean_tol: float,
                        p99_tol: float, max_tol: float = 255.0, what: str = "image") -> None:
    """Both in pixel units (see ``to_pixels``); fail with the measured statistics."""
    s = diff_stats(actual, expected)
    assert s.mean <= mean_tol and s.p99 <= p99_tol and s.max <= max_tol, (
        f"{what} differs from the reference: {s} (allowed mean {mean_tol}, p99 {p99_tol}, "
        f"max {max_tol})")


def high_frequency_energy(pixels: np.ndarray) -> float:
    """Mean squared difference of horizontally and vertically adjacent pixels ([..., H, W, C])."""
    p = np.asarray(pixels, np.float64)
    dx = np.diff(p, axis=-2)
    dy = np.diff(p, axis=-3)
    return float((dx ** 2).mean() + (dy ** 2).mean())


def is_gray(pixels: np.ndarray, atol: float = 0.5) -> bool:
    """All three channels equal (within ``atol`` pixel units) everywhere ([..., H, W, 3])."""
    p = np.asarray(pixels, np.float64)
    return bool(np.abs(p[..., 0] - p[..., 1]).max() <= atol
                and np.abs(p[..., 1] - p[..., 2]).max() <= atol)
