"""Batched photometric ops of the shared spec, as torch tensor ops on any device.

Used by the FFCV executor after its decode-once crop op, and usable after any decoder: images
arrive as uint8 (``[n, 3, H, W]`` or channels-last ``[n, H, W, 3]``), every op works on
float32 ``[n, 3, H, W]`` in [0, 1] with its own parameters per sample, and ``normalize`` maps
the result to the spec's mean/std and output dtype. On a GPU nothing here syncs with the host.

Semantics follow the reference recipe (PIL ops as the DINO code applies them):
- brightness ``x * f``; contrast ``m + f (x - m)`` with ``m`` the mean of the image's
  grayscale (ImageEnhance.Contrast); saturation ``g + f (x - g)`` with ``g`` the grayscale
  (ImageEnhance.Color); hue: RGB -> HSV, ``h += shift`` (mod 1 turn), HSV -> RGB. Each result
  is clipped to [0, 1] as PIL clips to uint8. The four run in each sample's own random order.
- grayscale: ITU-R 601-2 luma (0.299, 0.587, 0.114), as PIL's mode "L", on all 3 channels.
- gaussian blur: true separable gaussian (window covering 3 sigma, edge pixels replicated).
  PIL's GaussianBlur approximates a gaussian with three box blurs; the difference is measured
  in tests/pipelines/photometric/test_torch_ops.py.
- solarize: ``1 - x`` where ``x >= (threshold - 0.5) / 255``, i.e. where PIL, which rounds
  to uint8 first, would see a value ``>= threshold``.
Unlike PIL nothing is rounded to uint8 between ops; that is the one intended difference.

Parameters come as ``params.PhotometricParams`` (from param rows, explicit ``ViewParams`` or
drawn on the device: ``pipelines/photometric/params.py``). ``apply_photometric`` is the
vectorised path; its per-sample loop twin lives in tests/pipelines/photometric/test_torch_ops.py.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..sampling import JITTER_OPS
from ..spec import AugmentationSpec, ViewSpec
from .params import PhotometricParams, draw_params, params_from_rows

LUMA = (0.299, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = (JITTER_OPS.index(n) for n in
                                         ("brightness", "contrast", "saturation", "hue"))
_IDENTITY = -1  # "no op in this round" in the vectorised jitter schedule
CPU_CHUNK_BYTES = 1 << 22  # on the CPU, images go through the ops in chunks of this size


# ----------------------------------------------------------------------------- single ops
def _col(v: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1, 1] to broadcast over an image batch."""
    return v.reshape(-1, 1, 1, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Grayscale of float [n, 3, H, W] -> [n, 1, H, W] with PIL's "L" weights."""
    gray = x[:, 0:1] * LUMA[0]
    return gray.add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])


def _blend(x: torch.Tensor, degenerate: torch.Tensor | float, f: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, x, f) clipped: degenerate + f (x - degenerate)."""
    if isinstance(degenerate, torch.Tensor):
        return torch.lerp(degenerate.expand_as(x), x, _col(f).to(x.dtype)).clamp_(0.0, 1.0)
    return (degenerate + _col(f) * (x - degenerate)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, 0.0, f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, luma(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, luma(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of float [n, 3, H, W] by ``shift`` [n] turns (V and S kept).

    Written with arithmetic on masks rather than torch.where, remainder or channel
    reductions, which are several times slower on the CPU.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)  # chroma = V * S
    is_r = v == r
    is_g = (v == g) & ~is_r
    is_b = ~(is_r | is_g)
    # hue in sextants: (g - b) / c on the red sector, 2 + (b - r) / c, 4 + (r - g) / c
    h6 = (is_r * (g - b) + is_g * (b - r) + is_b * (r - g)).div_(c.clamp(min=1e-12))
    h6 += 2.0 * is_g + 4.0 * is_b + 6.0 * _col(shift)
    # hsv -> rgb in closed form: channel = V - C * clamp(min(k, 4 - k), 0, 1) with
    # k = (m + h6) mod 6, m = 5, 3, 1 for red, green, blue.
    k = h6 + torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # no host copy
    k -= 6.0 * torch.floor(k / 6.0)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(v, c, w, value=-1.0)


def to_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the images where ``mask`` [n] is set by their luma on all 3 channels."""
    return torch.lerp(x, luma(x).expand_as(x), _col(mask).to(x.dtype))


def blur_radius(sigma: float) -> int:
    """Half-width of a window covering 3 sigma."""
    return max(1, math.ceil(3.0 * sigma))


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-d gaussian kernels: sigma [n] -> [n, 2 * radius + 1].

    Row i is zero beyond its own ``blur_radius(sigma_i)``, so a wider window (shared by a
    batch) gives the same result as the sample's own.
    """
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    sigma = sigma.unsqueeze(1)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = torch.where(taps.abs() <= torch.ceil(3.0 * sigma).clamp(min=1.0), k, 0.0)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int, method: str = "auto"
                  ) -> torch.Tensor:
    """Separable gaussian blur, one sigma per image: x [n, 3, H, W], sigma [n].

    Edges replicate the border pixel, as PIL's box blurs do. method: "conv" (one grouped
    convolution per axis, each (image, channel) plane its own group: for GPUs), "shift"
    (a weighted sum of 2 * radius + 1 shifted views per axis: several times faster than
    the grouped convolution on the CPU), or "auto" (conv on CUDA, shift elsewhere).
    """
    if method == "auto":
        method = "conv" if x.device.type == "cuda" else "shift"
    n, ch, hgt, wid = x.shape
    k = gaussian_kernels(sigma, radius)  # [n, K]
    if method == "shift":
        w = k.view(n, 1, 1, 1, -1)
        padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        rows = padded[..., :wid] * w[..., 0]
        for j in range(1, 2 * radius + 1):
            rows.addcmul_(padded[..., j:j + wid], w[..., j])
        padded = F.pad(rows, (0, 0, radius, radius), mode="replicate")
        out = padded[:, :, :hgt] * w[..., 0]
        for j in range(1, 2 * radius + 1):
            out.addcmul_(padded[:, :, j:j + hgt], w[..., j])
        return out
    if method != "conv":
        raise ValueError(f"unknown blur method {method!r} (conv, shift, auto)")
    k = k.repeat_interleave(ch, dim=0)  # [n * 3, K]
    planes = x.reshape(1, n * ch, hgt, wid)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"),
                      k.view(n * ch, 1, 1, -1), groups=n * ch)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"),
                      k.view(n * ch, 1, -1, 1), groups=n * ch)
    return planes.view(n, ch, hgt, wid)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert pixels at or above ``threshold`` (uint8 scale) in the images where ``mask``."""
    hit = _col(mask) & (x >= (threshold - 0.5) / 255.0)
    return x.addcmul_(hit, 1.0 - 2.0 * x)  # x + hit * (1 - 2x): 1 - x where hit


# ----------------------------------------------------------------------------- colour jitter
def _jitter_op(x: torch.Tensor, op: int, factors: torch.Tensor, hue: torch.Tensor
               ) -> torch.Tensor:
    """Jitter op ``op`` (an index into JITTER_OPS) on every image of x."""
    if op == HUE:
        return adjust_hue(x, hue)
    fn = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
          SATURATION: adjust_saturation}[op]
    return fn(x, factors[:, op])


def _jitter_grouped(x: torch.Tensor, p: PhotometricParams) -> torch.Tensor:
    """CPU schedule: images with jitter, sorted by their op order (24 possible orders),
    run each order's four ops on a contiguous slice. Every op runs once on exactly the
    images that need it; the cost is one gather and one scatter."""
    # On the CPU the host syncs below (nonzero, unique_consecutive) cost nothing.
    rows = p.jitter.nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    order = p.order.index_select(0, rows)
    code = ((order[:, 0] * 4 + order[:, 1]) * 4 + order[:, 2]) * 4 + order[:, 3]
    code, sort = code.sort(stable=True)
    rows, order = rows[sort], order[sort]
    factors, hue = p.factors.index_select(0, rows), p.hue.index_select(0, rows)
    xs = x.index_select(0, rows)
    start = 0
    for count in torch.unique_consecutive(code, return_counts=True)[1].tolist():
        seg = slice(start, start + count)
        y = xs[seg]
        for op in order[start].tolist():
            y = _jitter_op(y, op, factors[seg], hue[seg])
        xs[seg] = y
        start += count
    return x.index_copy_(0, rows, xs)


def _blend_round(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply to each image the blend op ``op`` [n] names (brightness / contrast / saturation,
    or _IDENTITY), with its factor. All three are blends toward a degenerate image."""
    f = torch.ones_like(op, dtype=x.dtype)
    for code in (BRIGHTNESS, CONTRAST, SATURATION):
        f = torch.where(op == code, factors[:, code], f)
    gray = luma(x)
    degenerate = torch.where(_col(op == CONTRAST), gray.mean(dim=(2, 3), keepdim=True),
                             torch.where(_col(op == SATURATION), gray, 0.0))
    return _blend(x, degenerate, f)


def _jitter_rounds(x: torch.Tensor, p: PhotometricParams) -> torch.Tensor:
    """Sync-free schedule (for GPUs): every image in every round, selected by masks.

    Each order splits at the hue op into blend ops before and after it. Three rounds apply
    every image's k-th blend op before its hue (or nothing), one hue rotation runs on the
    whole batch (shift 0 for images without jitter: an identity), then three rounds apply
    the blend ops after the hue. Hue, the costly op, runs once rather than four times.
    """
    factors = torch.where(p.jitter.unsqueeze(1), p.factors, torch.ones_like(p.factors))
    order = torch.where(p.jitter.unsqueeze(1), p.order, torch.full_like(p.order, _IDENTITY))
    hue_pos = (p.order == HUE).int().argmax(dim=1)  # [n], position of hue in the order
    none = torch.full_like(hue_pos, _IDENTITY)
    for k in range(3):
        x = _blend_round(x, torch.where(k < hue_pos, order[:, k], none), factors)
    x = adjust_hue(x, torch.where(p.jitter, p.hue, torch.zeros_like(p.hue)))
    for k in range(3):
        pos = hue_pos + 1 + k
        after = order.gather(1, pos.clamp(max=3).unsqueeze(1)).squeeze(1)
        x = _blend_round(x, torch.where(pos < 4, after, none), factors)
    return x


def color_jitter(x: torch.Tensor, p: PhotometricParams, schedule: str = "auto"
                 ) -> torch.Tensor:
    """The four jitter ops in each image's own order, vectorised; x may be overwritten.

    schedule: "grouped" (fewest ops; syncs with the host, free on the CPU), "rounds" (no
    host sync, more work: for GPUs), or "auto" (rounds on CUDA, grouped elsewhere).
    """
    if schedule == "auto":
        schedule = "rounds" if x.device.type == "cuda" else "grouped"
    if schedule == "grouped":
        return _jitter_grouped(x, p)
    if schedule == "rounds":
        return _jitter_rounds(x, p)
    raise ValueError(f"unknown jitter schedule {schedule!r} (grouped, rounds, auto)")


# ----------------------------------------------------------------------------- whole recipe
def _on_rows(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """CPU helper: x with rows ``mask`` [n] replaced by ``fn(x[rows], rows)``; the host sync of
    nonzero() costs nothing on the CPU, and most images skip most ops."""
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    return x.index_copy_(0, rows, fn(x.index_select(0, rows), rows))


def _photometric(x: torch.Tensor, p: PhotometricParams, spec: AugmentationSpec,
                 schedule: str) -> torch.Tensor:
    """Jitter -> grayscale -> blur -> solarize; x is overwritten. schedule "rounds" (or
    "auto" on CUDA) never syncs with the host; "grouped" (or "auto" elsewhere) skips work."""
    if schedule == "auto":
        schedule = "rounds" if x.device.type == "cuda" else "grouped"
    x = color_jitter(x, p, schedule)
    if schedule == "rounds":
        # No host sync: every op on every image, masked (unit impulse kernel where no blur).
        x = to_grayscale(x, p.grayscale)
        sigma = torch.where(p.blur, p.sigma, torch.full_like(p.sigma, 1e-3))
        x = gaussian_blur(x, sigma, blur_radius(p.max_sigma))
        return solarize(x, p.solarize, spec.solarize_threshold)

    def blur(xs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        sigma = p.sigma.index_select(0, rows)  # window just wide enough for these sigmas
        return gaussian_blur(xs, sigma, blur_radius(float(sigma.max())))

    x = _on_rows(x, p.grayscale, lambda xs, _: luma(xs).expand_as(xs))
    x = _on_rows(x, p.blur, blur)
    return _on_rows(x, p.solarize, lambda xs, rows: solarize(
        xs, torch.ones_like(rows, dtype=torch.bool), spec.solarize_threshold))


def cpu_chunks(n: int, image_bytes: int) -> list[slice]:
    """Row ranges of about CPU_CHUNK_BYTES: the ops' temporaries then stay in cache."""
    step = max(1, CPU_CHUNK_BYTES // max(1, image_bytes))
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def apply_photometric(x: torch.Tensor, p: PhotometricParams, spec: AugmentationSpec,
                      schedule: str = "auto") -> torch.Tensor:
    """Jitter -> grayscale -> blur -> solarize on float [n, 3, H, W] in [0, 1], vectorised.

    Returns a new tensor. On the CPU the batch goes through in cache-sized chunks of rows.
    ``schedule``: "grouped" (each op only on the images that need it; host syncs, free on
    the CPU), "rounds" (masks only, no host sync: for GPUs), "auto" (by device).
    """
    x = x.clone()
    if x.device.type == "cuda":
        return _photometric(x, p, spec, schedule)
    for sl in cpu_chunks(x.shape[0], x[0].numel() * x.element_size()):
        x[sl] = _photometric(x[sl], p.rows(sl), spec, schedule)
    return x


def to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [n, H, W, 3] (channels_last) or [n, 3, H, W] -> float32 [n, 3, H, W] in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if channels_last:
        images = images.permute(0, 3, 1, 2)
    return images.float().div_(255.0)


class PhotometricOps:
    """The spec's photometric ops + normalisation, compiled once for a device.

    ``ops(images, views, generator)`` takes uint8 images of ``len(views)`` views stacked
    view-major (``[len(views) * B, ...]``), draws every sample's parameters on the device
    (or takes ``params``) and returns normalised float images [len(views) * B, 3, H, W] in
    the spec's output dtype.
    """

    def __init__(self, spec: AugmentationSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / std, -mean / std  # (x - mean) / std in one op
        self.dtype = getattr(torch, spec.output_dtype)

    def normalize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """float [n, 3, H, W] in [0, 1] -> (x - mean) / std in the output dtype."""
        if out is not None and out.dtype == x.dtype:
            return torch.addcmul(self.shift, x, self.scale, out=out)
        y = torch.addcmul(self.shift, x, self.scale).to(self.dtype)
        if out is not None:
            out.copy_(y)
        return y

    def __call__(self, images: torch.Tensor, views: Sequence[ViewSpec],
                 generator: torch.Generator, channels_last: bool = True,
                 params: PhotometricParams | None = None) -> torch.Tensor:
        n = images.shape[0]
        if n % len(views):
            raise ValueError(f"{n} images do not split into {len(views)} views")
        if params is None:
            params = draw_params(self.spec, views, n // len(views), generator, self.device)
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = to_float(images, channels_last)
            return self.normalize(_photometric(x, params, self.spec, "auto"))
        hw = images.shape[1:3] if channels_last else images.shape[2:4]
        out = torch.empty((n, 3, *hw), dtype=self.dtype)
        for sl in cpu_chunks(n, 12 * hw[0] * hw[1]):  # float32 bytes per image
            x = to_float(images[sl], channels_last)
            self.normalize(_photometric(x, params.rows(sl), self.spec, "auto"), out=out[sl])
        return out


@functools.lru_cache(maxsize=8)
def ops_for(spec: AugmentationSpec, device: torch.device) -> PhotometricOps:
    """Built once per spec and device: its constants are uploaded once, not per batch."""
    return PhotometricOps(spec, device)


def finish_rows(crops: torch.Tensor, rows: torch.Tensor, spec: AugmentationSpec) -> torch.Tensor:
    """``finish_views``' torch implementation: uint8 crops ``[N, S, S, 3]`` and their
    ``param_row`` rows ``[N, WIDTH]`` (on the crops' device) -> ``[N, 3, S, S]``."""
    params = params_from_rows(rows, spec)
    return ops_for(spec, crops.device)(crops, spec.global_views[:1], generator=None,
                                       params=params)
