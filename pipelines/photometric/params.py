"""Per-sample photometric parameters of a batch, as tensors on one device.

Three ways to get them, all giving the same ``PhotometricParams``:
- ``params_from_rows``: from ``pipelines.sampling.param_row`` rows (what every executor
  draws through the counter stream), on any device, without a host sync;
- ``params_from_views``: from explicit ``ViewParams``, so tests can force any case;
- ``draw_params``: drawn on the device from a ``torch.Generator`` (benchmarks and tests).

``torch_ops.apply_photometric`` and the fused kernels apply them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import ViewParams, jitter_ranges
from ..sampling.param_row import COL, ORDER
from ..spec import AugmentationSpec, ViewSpec


@dataclass(frozen=True)
class PhotometricParams:
    """Per-sample photometric parameters of a batch of ``n`` images (tensors on one device).

    jitter: bool [n], colour jitter applied; order: int64 [n, 4], a permutation of the
    indices of ``sampling.JITTER_OPS``; factors: float32 [n, 3], brightness, contrast and
    saturation factors (columns in JITTER_OPS order); hue: float32 [n], shift in turns;
    grayscale, blur, solarize: bool [n]; sigma: float32 [n], blur sigma in pixels (ignored
    where ``blur`` is False); max_sigma: host-side bound on sigma, so the blur window is
    sized without a host sync.
    """

    jitter: torch.Tensor
    order: torch.Tensor
    factors: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor
    max_sigma: float

    def __len__(self) -> int:
        return int(self.jitter.shape[0])

    def rows(self, sl: slice) -> "PhotometricParams":
        """The parameters of rows ``sl`` (views, no copy)."""
        return PhotometricParams(self.jitter[sl], self.order[sl], self.factors[sl],
                                 self.hue[sl], self.grayscale[sl], self.blur[sl],
                                 self.sigma[sl], self.solarize[sl], self.max_sigma)


def draw_params(spec: AugmentationSpec, views: Sequence[ViewSpec], batch: int,
                generator: torch.Generator, device: torch.device | str) -> PhotometricParams:
    """Draw parameters for ``len(views) * batch`` images on ``device``.

    Rows are view-major: row ``v * batch + b`` is sample ``b`` of ``views[v]``, whose per-view
    probabilities (blur_p, solarize_p) it uses. Everything else comes from ``spec``.
    """
    n = len(views) * batch
    dev = torch.device(device)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    def per_row(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=dev).repeat_interleave(batch)

    *factor_ranges, (hue_lo, hue_hi) = jitter_ranges(spec)  # the samplers' ranges
    lo = torch.tensor([r[0] for r in factor_ranges], device=dev)
    hi = torch.tensor([r[1] for r in factor_ranges], device=dev)
    s_lo, s_hi = spec.blur_sigma
    return PhotometricParams(
        jitter=rand(n) < spec.jitter.p,
        order=rand(n, 4).argsort(dim=1),  # a uniform random permutation per row
        factors=lo + (hi - lo) * rand(n, 3),
        hue=hue_lo + (hue_hi - hue_lo) * rand(n),
        grayscale=rand(n) < spec.grayscale_p,
        blur=rand(n) < per_row([v.blur_p for v in views]),
        sigma=s_lo + (s_hi - s_lo) * rand(n),
        solarize=rand(n) < per_row([v.solarize_p for v in views]),
        max_sigma=float(s_hi))


def params_from_views(views: Sequence[ViewParams], device: torch.device | str = "cpu"
                      ) -> PhotometricParams:
    """Explicit parameters, one row per ``ViewParams`` (geometry fields are ignored)."""
    def t(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    on = [v.jitter is not None for v in views]
    jit = [v.jitter for v in views]
    sigmas = [v.blur_sigma if v.blur_sigma is not None else 1.0 for v in views]
    return PhotometricParams(
        jitter=t(on, torch.bool),
        order=t([list(p.order) if p else list(range(4)) for p in jit], torch.int64),
        factors=t([[p.brightness, p.contrast, p.saturation] if p else [1.0] * 3 for p in jit],
                  torch.float32),
        hue=t([p.hue if p else 0.0 for p in jit], torch.float32),
        grayscale=t([v.grayscale for v in views], torch.bool),
        blur=t([v.blur_sigma is not None for v in views], torch.bool),
        sigma=t(sigmas, torch.float32),
        solarize=t([v.solarize for v in views], torch.bool),
        max_sigma=max(sigmas, default=1.0))


def params_from_rows(rows: torch.Tensor, spec: AugmentationSpec) -> PhotometricParams:
    """Parameters from ``param_row`` rows ``[n, WIDTH]`` on any device, without a host sync
    (the blur window is sized from the spec's largest sigma, not from the rows)."""
    r = rows.to(torch.float32)
    return PhotometricParams(
        jitter=r[:, COL.jitter] > 0, order=r[:, ORDER].to(torch.int64),
        factors=r[:, COL.brightness:COL.saturation + 1].contiguous(), hue=r[:, COL.hue].contiguous(),
        grayscale=r[:, COL.grayscale] > 0, blur=r[:, COL.blur] > 0,
        sigma=r[:, COL.sigma].contiguous(), solarize=r[:, COL.solarize] > 0,
        max_sigma=float(spec.blur_sigma[1]))
