"""What the compiled photometric kernels take from an ``AugmentationSpec``, computed once.

Shared by the numba CPU kernel (``cpu_kernel``), the CUDA kernel (``cuda``) and its host
twin (``host_twin``); numba-free, so the CUDA path does not need numba.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..spec import AugmentationSpec
from .torch_ops import blur_radius


class KernelConsts(NamedTuple):
    """What the kernels need from an ``AugmentationSpec``.

    norm: float32 [2, 3], rows ``1 / std`` and ``-mean / std`` (computed in float32 as
    ``PhotometricOps`` does, so normalisation rounds the same); solarize_at: the [0, 1]
    level from which solarize inverts; max_radius: the blur half-width of the spec's largest
    sigma (as the kernels compute it from a float32 row, and at least torch_ops'), which
    sizes scratch buffers and the CUDA kernel's blur tiles.
    """

    norm: np.ndarray
    solarize_at: np.float32
    max_radius: int


def kernel_radius(sigma: float) -> int:
    """Blur half-width the kernels use for a row's sigma (rounded to float32): the smaller of
    torch_ops' tap mask (float32 ceil(3 sigma)) and its window (float64), at least 1."""
    s = np.float32(sigma)
    return max(1, min(math.ceil(np.float32(3.0) * s), math.ceil(3.0 * float(s))))


def kernel_consts(spec: AugmentationSpec) -> KernelConsts:
    std, mean = np.asarray(spec.std, np.float32), np.asarray(spec.mean, np.float32)
    norm = np.stack([np.float32(1.0) / std, -mean / std]).astype(np.float32)
    hi = spec.blur_sigma[1]
    # Rows hold float32 sigmas <= float32(hi), and the radius grows with sigma.
    return KernelConsts(norm, np.float32((spec.solarize_threshold - 0.5) / 255.0),
                        max(blur_radius(hi), kernel_radius(hi)))
