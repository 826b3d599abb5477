"""The photometric ops of the DINO recipe as DALI graph functions.

Images are batches of uint8 ``HWC`` RGB ``DataNode``s on either device; every op returns
uint8 again, rounded and saturated, which is what PIL (the reference executor) does after
each op. Parameters are per-sample scalars on the CPU (``DataNode``s of shape [] or [1]).

- brightness ``x * f`` and saturation (blend toward the per-pixel luma) are DALI's native
  ``brightness`` / ``saturation`` ops (checked against PIL to within one level).
- contrast blends toward the MEAN LUMA OF THE CURRENT IMAGE, as the reference does, not
  toward DALI's fixed default centre: on the CPU the measured mean is passed as the native
  op's centre; on the GPU, where the mean is a GPU value and arguments must be CPU values,
  the blend is written with arithmetic (``contrast_blend``, also tested on the CPU).
- hue is a true HSV hue rotation written with arithmetic (DALI's ``hue``/``hsv`` rotate in
  YIQ space, a linear approximation).
- grayscale: ITU-R 601-2 luma (PIL's ``L``) replicated on the three channels.
- gaussian blur: per-sample sigma and window; a 1-tap window is the identity.
- solarize: ``255 - x`` where ``x >= threshold``; returns float (normalisation follows).
"""
from __future__ import annotations

from typing import Any

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types

_EPS = 1e-6
# Offsets n of the HSV -> RGB formula channel(n) = V - C * clamp(min(k, 4 - k), 0, 1),
# k = (n + H / 60deg) mod 6, for R, G, B.
_HSV_OFFSETS = (5.0, 3.0, 1.0)


def to_uint8(x: Any) -> Any:
    """Round to the nearest level and saturate to 0..255 (DALI's cast rounds)."""
    return fn.cast(dmath.clamp(x, 0.0, 255.0), dtype=types.UINT8)


def brightness(x: Any, factor: Any) -> Any:
    """``x * factor`` (PIL: blend toward black); factor 1 is the identity."""
    return fn.brightness(x, brightness=factor)


def saturation(x: Any, factor: Any) -> Any:
    """Blend toward the per-pixel luma; 0 gives grayscale, 1 is the identity."""
    return fn.saturation(x, saturation=factor)


def luma(x: Any) -> Any:
    """ITU-R 601-2 luma ``[H, W, 1]`` uint8, level for level PIL's ``L`` conversion."""
    return fn.color_space_conversion(x, image_type=types.RGB, output_type=types.GRAY)


def mean_luma(x: Any) -> Any:
    """Per-sample mean of the luma, a float scalar on x's device."""
    return fn.reductions.mean(luma(x))


def grayscale(x: Any, on: Any) -> Any:
    """The luma on all three channels where ``on`` = 1 (per sample), exactly equal channels.

    (DALI's ``saturation(0)`` would round each channel back from YIQ separately, leaving
    channels one level apart.)
    """
    return fn.cast((1.0 - on) * x + on * luma(x), dtype=types.UINT8)


def contrast(x: Any, factor: Any) -> Any:
    """Blend toward the mean luma of ``x``: ``factor * x + (1 - factor) * mean``.

    On the CPU the mean is a CPU node, so DALI's native op takes it as its centre; on the
    GPU the mean lives on the GPU, where an argument cannot, so ``contrast_blend`` does it.
    """
    if x.device == "cpu":
        return fn.brightness_contrast(x, contrast=factor, contrast_center=mean_luma(x))
    return contrast_blend(x, factor)


def contrast_blend(x: Any, factor: Any) -> Any:
    """``contrast`` written with arithmetic (any device; the GPU path)."""
    return to_uint8(factor * x + (1.0 - factor) * mean_luma(x))


def rotate_hue(x: Any, shift: Any) -> Any:
    """True HSV hue rotation by ``shift`` turns (per sample, in [-0.5, 0.5]).

    V = max(r, g, b) and chroma C = V - min(r, g, b) are kept. The hue sector
    H' = H / 60deg comes from whichever channel is the maximum (ties give the same hue
    from either side), is shifted by ``6 * shift``, and the image is rebuilt with the
    branch-free HSV -> RGB formula on all three channels at once. Gray pixels (C = 0)
    are left unchanged whatever their (undefined) hue.
    """
    xf = fn.cast(x, dtype=types.FLOAT)
    r, g, b = xf[:, :, 0:1], xf[:, :, 1:2], xf[:, :, 2:3]
    v = fn.reductions.max(xf, axes=[2], keep_dims=True)
    c = v - fn.reductions.min(xf, axes=[2], keep_dims=True)
    max_r = (r >= g) * (r >= b)
    max_g = (g > r) * (g >= b)
    max_b = 1.0 - max_r - max_g
    scaled = max_r * (g - b) + max_g * (b - r + 2.0 * c) + max_b * (r - g + 4.0 * c)
    sector = scaled / dmath.max(c, _EPS) + 6.0 * shift
    offsets = fn.constant(fdata=list(_HSV_OFFSETS), shape=[1, 1, 3], dtype=types.FLOAT,
                          device=x.device)
    k = sector + offsets
    k = k - 6.0 * dmath.floor(k / 6.0)
    return to_uint8(v - c * dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0))


def gaussian_blur(x: Any, sigma: Any, window: Any) -> Any:
    """Gaussian blur with per-sample ``sigma`` and odd ``window`` (1 = identity).

    The loader sets ``window = 2 * ceil(3 sigma) + 1`` (covers 3 sigma) for blurred views.
    Border: reflect-101.
    """
    return fn.gaussian_blur(x, sigma=sigma, window_size=fn.cast(window, dtype=types.INT32))


def solarize(x: Any, on: Any, threshold: float) -> Any:
    """``255 - x`` for levels ``>= threshold`` where ``on`` = 1 (per sample); float output."""
    return x + on * (x >= threshold) * (255.0 - 2.0 * x)


def normalize(x: Any, mirror: Any, mean: tuple[float, float, float],
              std: tuple[float, float, float], dtype: Any) -> Any:
    """Flip where ``mirror`` = 1, ``(x / 255 - mean) / std``, HWC -> CHW, cast to ``dtype``.

    The flip is done here, last, because every op before it (pointwise colour ops, a global
    mean, a symmetric blur kernel with a symmetric border) commutes with it.
    """
    return fn.crop_mirror_normalize(x, mirror=fn.cast(mirror, dtype=types.INT32),
                                    mean=[255.0 * m for m in mean],
                                    std=[255.0 * s for s in std], output_layout="CHW",
                                    dtype=dtype)
