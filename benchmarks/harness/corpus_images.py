"""One image of the ImageNet-like benchmark corpus, synthesised from a real photo.

ImageNet's training JPEGs (the figures the corpus imitates): most have their longer side at
exactly 500 px (the median image is 500x375), mostly landscape 4:3 or 3:2 with portraits and
squares among them; a few are small (~100 px) and a few large (up to thousands of px); the
mean file is ~110 KB at quality ~90, i.e. several bits per pixel, because real photos are
full of fine detail.

A corpus image is a random crop of one of the embedded photos (``pipelines.embedded``),
resampled to a size drawn from that distribution, maybe flipped, mildly jittered
(brightness, per-channel gain) and given fine detail: a high-passed texture photo (gravel,
grass, brick) tiled at about one texel per pixel plus sensor-like noise. Resampled photos are
smoother than real ones and compress 2-3x better; the detail restores realistic entropy, so
files reach ImageNet's bytes per pixel and hence its decode cost (entropy decoding is most
of a JPEG decode). ``DETAIL`` scales the detail; it was tuned so the mean file lands near
110 KB (see ``benchmarks/harness/corpus.py`` for the measured statistics).

Everything is a function of ``(seed, index)`` only, so a corpus is identical whatever the
number of worker processes that write it.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# (share, longer side low, high): the size classes; the rest has its longer side at 500 px.
LARGE = (0.03, 1200, 2500)
SMALL = (0.05, 80, 250)
MEDIUM = (0.12, 250, 499)
LONG_SIDE = 500
# (share, width / height); the remaining share draws a log-uniform ratio in [1/2, 2].
ASPECTS = ((0.42, 4 / 3), (0.20, 3 / 2), (0.14, 3 / 4), (0.07, 2 / 3), (0.07, 1.0))
FREE_ASPECT = (0.5, 2.0)
CROP_AREA = (0.3, 1.0)      # share of the largest box of the target aspect inside the photo
BRIGHTNESS = (0.85, 1.15)
CHANNEL_GAIN = (0.92, 1.08)
TEXTURE_AMP = (0.6, 1.6)    # times DETAIL: weight of the high-passed texture
NOISE_SIGMA = (2.0, 6.0)    # times DETAIL: grey levels of Gaussian noise
TEXEL_PER_PIXEL = (0.6, 1.2)
DETAIL = 2.2
TEXTURES = ("gravel", "grass", "brick")


@dataclass(frozen=True)
class ImagePlan:
    """Every random choice of one corpus image (drawn by ``plan_image``)."""

    index: int
    width: int
    height: int
    photo: int                 # index into the corpus's photo list
    box: tuple[float, float, float, float]  # source crop (left, top, right, bottom)
    flip: bool
    gains: tuple[float, float, float]
    texture: int               # index into the texture list (-1: none)
    texture_amp: float
    texels: float              # texture pixels per output pixel
    texture_offset: tuple[int, int]
    noise_sigma: float
    noise_seed: int


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) from ImageNet's mix of sizes and aspect ratios."""
    u = rng.random()
    if u < LARGE[0]:
        long_side = int(rng.integers(LARGE[1], LARGE[2] + 1))
    elif u < LARGE[0] + SMALL[0]:
        long_side = int(rng.integers(SMALL[1], SMALL[2] + 1))
    elif u < LARGE[0] + SMALL[0] + MEDIUM[0]:
        long_side = int(rng.integers(MEDIUM[1], MEDIUM[2] + 1))
    else:
        long_side = LONG_SIDE
    v, aspect = rng.random(), None
    for share, ratio in ASPECTS:
        if v < share:
            aspect = ratio
            break
        v -= share
    if aspect is None:
        aspect = math.exp(rng.uniform(math.log(FREE_ASPECT[0]), math.log(FREE_ASPECT[1])))
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def plan_image(seed: int, index: int, photo_sizes: list[tuple[int, int]],
               num_classes: int, num_textures: int) -> ImagePlan:
    """The random choices of image ``index``: a function of (seed, index) alone.

    The photo is the class's own (class ``index % num_classes`` takes photo
    ``class % len(photo_sizes)``), so a class is one scene seen through many crops.
    """
    rng = np.random.default_rng([seed, index])
    w, h = draw_size(rng)
    photo = (index % num_classes) % len(photo_sizes)
    pw, ph = photo_sizes[photo]
    aspect = w / h
    bw = min(pw, ph * aspect)
    bh = bw / aspect
    scale = math.sqrt(rng.uniform(*CROP_AREA))
    cw, ch = bw * scale, bh * scale
    x, y = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    gains = rng.uniform(*BRIGHTNESS) * rng.uniform(*CHANNEL_GAIN, size=3)
    # larger photos carry less detail per pixel (as camera originals do)
    detail = DETAIL * min(1.0, LONG_SIDE / max(w, h))
    return ImagePlan(
        index=index, width=w, height=h, photo=photo, box=(x, y, x + cw, y + ch),
        flip=bool(rng.random() < 0.5), gains=tuple(float(g) for g in gains),
        texture=int(rng.integers(num_textures)) if num_textures else -1,
        texture_amp=detail * float(rng.uniform(*TEXTURE_AMP)),
        texels=float(rng.uniform(*TEXEL_PER_PIXEL)),
        texture_offset=(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16))),
        noise_sigma=detail * float(rng.uniform(*NOISE_SIGMA)),
        noise_seed=int(rng.integers(0, 1 << 63)))


def high_pass(texture: Image.Image) -> np.ndarray:
    """The texture's fine detail: grey levels minus their 9x9 box mean, float32 [H, W]."""
    grey = texture.convert("L")
    fine = np.asarray(grey, np.float32) - np.asarray(grey.filter(ImageFilter.BoxBlur(4)),
                                                     np.float32)
    return fine


def texture_layer(fine: np.ndarray, plan: ImagePlan) -> np.ndarray:
    """``fine`` tiled (offset by the plan) over the output at ``plan.texels`` texels per
    pixel, resampled to [height, width] float32."""
    th, tw = fine.shape
    need_w = max(1, round(plan.width * plan.texels))
    need_h = max(1, round(plan.height * plan.texels))
    ox, oy = plan.texture_offset[0] % tw, plan.texture_offset[1] % th
    reps = (math.ceil((need_h + oy) / th), math.ceil((need_w + ox) / tw))
    tiled = np.tile(fine, reps)[oy:oy + need_h, ox:ox + need_w]
    layer = Image.fromarray(tiled, mode="F").resize((plan.width, plan.height), Image.BILINEAR)
    return np.asarray(layer, np.float32)


def render(plan: ImagePlan, photos: list[Image.Image], textures: list[np.ndarray]
           ) -> np.ndarray:
    """The plan's pixels, uint8 [height, width, 3]."""
    img = photos[plan.photo].resize((plan.width, plan.height), Image.BICUBIC, box=plan.box)
    arr = np.asarray(img, np.float32)
    if plan.flip:
        arr = arr[:, ::-1]
    arr = arr * np.asarray(plan.gains, np.float32)
    if plan.texture >= 0:
        arr += plan.texture_amp * texture_layer(textures[plan.texture], plan)[..., None]
    noise = np.random.default_rng(plan.noise_seed).standard_normal(arr.shape, np.float32)
    arr += plan.noise_sigma * noise
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG (4:2:0 chroma, PIL's default at this quality) of uint8 [H, W, 3]."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
