"""The reference executor: the augmentation spec run with PIL + numpy, one image at a time.

This is the fidelity oracle every other executor (DALI, FFCV + tensor ops) is tested
against, and the plain CPU fallback behind ``reference_backend``. It follows the DINO
reference recipe op for op (see ``pipelines/spec.py``):

    crop box -> resize to view.size (spec.interpolation) -> horizontal flip
    -> colour jitter (brightness, contrast, saturation, hue in params.jitter.order)
    -> grayscale -> gaussian blur -> solarize -> /255 -> normalise (spec.mean, spec.std)

Randomness is not drawn here: ``pipelines.sampling`` draws a ``ViewParams`` per view and
``apply_view`` executes it, so a test can force any parameter. The per-op functions below
work on PIL RGB images and are public so other backends' tests can compare op by op.

Output dtype: always float32 [3, S, S]. ``spec.output_dtype`` is applied by the loaders when
the batch reaches the device (a half-precision copy on the host would save nothing here).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from .sampling import JITTER_OPS, JitterParams, Rng, ViewParams, sample_image_params
from .spec import AugmentationSpec, ViewSpec

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


# ------------------------------------------------------------------------------ per-op layer
def resized_crop(img: Image.Image, box: tuple[int, int, int, int], size: int,
                 interpolation: str = "bicubic") -> Image.Image:
    """Crop ``box`` = (top, left, height, width), then resize to ``size`` x ``size``.

    Cropping first means the resampling filter never reads pixels outside the box.
    """
    top, left, h, w = box
    return img.crop((left, top, left + w, top + h)).resize((size, size), RESAMPLE[interpolation])


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    """Blend toward black: out = factor * img (clipped). Factor 1 is the identity."""
    return img if factor == 1.0 else ImageEnhance.Brightness(img).enhance(factor)


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    """Blend toward the mean of the grayscale image (rounded to an integer level, as PIL does)."""
    return img if factor == 1.0 else ImageEnhance.Contrast(img).enhance(factor)


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    """Blend toward the grayscale image (PIL's ``L`` conversion). Factor 0 gives grayscale."""
    return img if factor == 1.0 else ImageEnhance.Color(img).enhance(factor)


def adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    """Rotate the HSV hue by ``hue`` of a full turn (in [-0.5, 0.5]).

    PIL's HSV stores H in 0..255, so the shift is round(hue * 255) with uint8 wrap-around.
    A zero shift returns the input (the HSV round trip itself is lossy).
    """
    if not -0.5 <= hue <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5] of a turn, got {hue}")
    shift = int(round(hue * 255))
    if shift == 0:
        return img
    h, s, v = img.convert("HSV").split()
    h_arr = (np.asarray(h, dtype=np.int16) + shift) % 256  # uint8 wrap-around
    h = Image.fromarray(h_arr.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def apply_jitter(img: Image.Image, jitter: JitterParams) -> Image.Image:
    """The four colour-jitter ops in ``jitter.order`` (indices into ``JITTER_OPS``)."""
    ops = {
        "brightness": lambda im: adjust_brightness(im, jitter.brightness),
        "contrast": lambda im: adjust_contrast(im, jitter.contrast),
        "saturation": lambda im: adjust_saturation(im, jitter.saturation),
        "hue": lambda im: adjust_hue(im, jitter.hue),
    }
    for i in jitter.order:
        img = ops[JITTER_OPS[i]](img)
    return img


def to_grayscale(img: Image.Image) -> Image.Image:
    """ITU-R 601-2 luma (PIL ``L``), replicated to three equal RGB channels."""
    return img.convert("L").convert("RGB")


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """PIL's gaussian blur with radius = ``sigma`` (PIL's radius is the standard deviation)."""
    return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def solarize(img: Image.Image, threshold: int) -> Image.Image:
    """Invert (255 - v) every channel value v >= ``threshold``; 256 leaves the image as is."""
    lut = [v if v < threshold else 255 - v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def to_normalized_tensor(img: Image.Image, mean: tuple[float, float, float],
                         std: tuple[float, float, float]) -> torch.Tensor:
    """RGB image [H, W] -> float32 tensor [3, H, W] = (pixel / 255 - mean) / std."""
    x = np.asarray(img, dtype=np.float32)  # [H, W, 3]; numpy beats torch on one small image
    x = (x / np.float32(255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# ------------------------------------------------------------------------------ executor
def apply_view_pil(img: Image.Image, params: ViewParams, view: ViewSpec,
                   spec: AugmentationSpec) -> Image.Image:
    """Every op of one view up to (not including) normalisation: RGB [view.size]^2."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = resized_crop(img, params.box, view.size, spec.interpolation)
    if params.flip:
        out = hflip(out)
    if params.jitter is not None:
        out = apply_jitter(out, params.jitter)
    if params.grayscale:
        out = to_grayscale(out)
    if params.blur_sigma is not None:
        out = gaussian_blur(out, params.blur_sigma)
    if params.solarize:
        out = solarize(out, spec.solarize_threshold)
    return out


def apply_view(img: Image.Image, params: ViewParams, view: ViewSpec,
               spec: AugmentationSpec) -> torch.Tensor:
    """One view of ``img`` with fixed ``params``: float32 [3, view.size, view.size], normalised."""
    return to_normalized_tensor(apply_view_pil(img, params, view, spec), spec.mean, spec.std)


class ReferenceMultiCrop:
    """``(img, rng) -> [views]``: all ``spec.num_views`` views of one image, globals first.

    Global views are [3, G, G], local views [3, L, L], float32, normalised. Parameters come
    from ``pipelines.sampling.sample_image_params`` with ``rng`` (the sample's counter stream
    ``sample_rng(seed, rank, epoch, index)``, which the DALI and FFCV executors replay in
    compiled code; any numpy-Generator-like object works), so the result depends only on
    the image and the stream's position.
    """

    def __init__(self, spec: AugmentationSpec) -> None:
        self.spec = spec
        self.views = spec.views()

    def draw(self, img: Image.Image, rng: Rng) -> list[ViewParams]:
        """The parameters of every view for an image of ``img.size``."""
        return sample_image_params(self.spec, img.width, img.height, rng)

    def apply(self, img: Image.Image, params: list[ViewParams]) -> list[torch.Tensor]:
        if len(params) != len(self.views):
            raise ValueError(f"got {len(params)} view parameters, the spec has {len(self.views)} views")
        return [apply_view(img, p, v, self.spec) for p, v in zip(params, self.views)]

    def __call__(self, img: Image.Image, rng: Rng) -> list[torch.Tensor]:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.apply(img, self.draw(img, rng))
