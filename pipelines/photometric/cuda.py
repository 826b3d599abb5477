"""The fused photometric CUDA kernel: ``finish_views``' implementation for CUDA crops.

``csrc/photometric_kernel.cu`` is built ahead of time into the project's kernel library
(``pipelines.kernels``: ``dino-build-kernels``) and called through ctypes; no compiler and
no torch headers at run time. Per call, for every view size given together, two launches
on the current stream: the contrast means (views with jitter), then one fused pass that
reads each crop once (the blur halo from L2) and writes each output once. The math is the
header ``csrc/photometric.cuh``, which the host twin (``host_twin``) builds for the CPU
tests; the GPU tests hold this kernel against that twin and the torch ops.

No host sync per call: the spec's constants (normalisation, solarize level, blur radius
bound) travel as kernel arguments, prepared once per spec; rows go to the kernel as the
device tensor they are; outputs and the small workspace come from torch's caching
allocator; the stream is torch's current one. The calls can be captured in a CUDA graph.

A row the kernel cannot apply (a jitter order that is not a permutation of 0..3, a blur
sigma beyond the spec's bound) yields NaN for its view instead of an exception, which would
need a host sync.

On the CPU emulation of the kernel library (``pipelines.kernels.library.use_emulation``;
tests marked ``device_emulation``) the same calls run the kernel's device code on CPU
threads: crops, rows and outputs are then CPU tensors and the stream is 0. A spec whose largest blur sigma needs a wider window than the kernel is
compiled for (``csrc/photometric.cuh`` MAX_RADIUS: sigma <= 4) is finished by the torch ops,
with one warning.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch

from ..kernels import library
from ..spec import AugmentationSpec
from . import kernel_abi, torch_ops
from .constants import kernel_consts

log = logging.getLogger(__name__)
PREFIX = "dino_photometric_"


def _bound() -> tuple[kernel_abi.Abi | None, str | None]:
    """The selected library's photometric functions, or why they are unavailable."""
    try:
        lib = library.load()  # cached by the loader
    except library.KernelsUnavailable as exc:
        return None, str(exc)
    return _bind(lib)


@functools.cache
def _bind(lib) -> tuple[kernel_abi.Abi | None, str | None]:
    try:
        return kernel_abi.bind(lib, PREFIX), None
    except kernel_abi.AbiMismatch as exc:
        return None, (f"{exc}; rebuild the library with dino-build-kernels (its SOURCES must "
                      "list pipelines/photometric/csrc/photometric_kernel.cu)")


def unavailable_reason() -> str | None:
    """None when the kernel can run here (a GPU, or the selected CPU emulation), else why
    not (the library is loaded once)."""
    return _bound()[1]


def _abi() -> kernel_abi.Abi:
    abi, reason = _bound()
    if abi is None:
        raise RuntimeError(f"the CUDA photometric kernel is unavailable: {reason}")
    return abi


@functools.lru_cache(maxsize=8)
def _constants(spec: AugmentationSpec) -> kernel_abi.Constants:
    """The spec's kernel arguments, built once per spec (they are the same on every device)."""
    return kernel_abi.constants(kernel_consts(spec))


@functools.lru_cache(maxsize=8)
def _too_wide(spec: AugmentationSpec, compiled: int) -> bool:
    radius = _constants(spec).max_radius
    if radius > compiled:
        log.warning("photometric: blur_sigma up to %s needs a blur radius of %d, the CUDA "
                    "kernel is compiled for %d: these views are finished by the torch ops",
                    spec.blur_sigma[1], radius, compiled)
    return radius > compiled


def _check(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for crops, rows in batches:
        kernel_abi.check_views(crops, rows, "photometric cuda.finish")
    if len({c.device for c, _ in batches}) > 1:
        raise ValueError("photometric cuda.finish_many: all batches must be on one device")
    if batches:
        library.check_tensors("photometric cuda.finish", crops=batches[0][0])


def finish_many(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], spec: AugmentationSpec,
                outs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Several batches of views, one size per batch, finished in two launches.

    batches: (crops uint8 [N_i, S_i, S_i, 3], rows [N_i, param_row.WIDTH] float32/float64)
        on one CUDA device, e.g. the global views [2B, 224, 224, 3] and the local views
        [10B, 96, 96, 3] of a batch.
    outs: optional [N_i, 3, S_i, S_i] contiguous tensors in the spec's output dtype to write.
    Returns [N_i, 3, S_i, S_i] in ``spec.output_dtype`` per batch.
    """
    abi = _abi()
    _check(batches)
    if not batches:
        return []
    dtype = getattr(torch, spec.output_dtype)
    if outs is not None:
        for (crops, _), out in zip(batches, outs, strict=True):
            n, s = crops.shape[0], crops.shape[1]
            if out.shape != (n, 3, s, s) or out.dtype != dtype or not out.is_contiguous() \
                    or out.device != crops.device:
                raise ValueError(f"photometric cuda.finish: out must be contiguous {dtype} "
                                 f"[{n}, 3, {s}, {s}] on {crops.device}, got {out.dtype} "
                                 f"{tuple(out.shape)} on {out.device}")
    if _too_wide(spec, abi.max_radius):
        results = [torch_ops.finish_rows(crops, rows, spec) for crops, rows in batches]
        if outs is None:
            return results
        for out, result in zip(outs, results):
            out.copy_(result)
        return list(outs)
    device = batches[0][0].device
    with library.device_scope(device):
        return kernel_abi.finish_batches(abi, batches, _constants(spec), dtype,
                                         library.stream_handle(device), outs)


def finish(crops: torch.Tensor, rows: torch.Tensor, spec: AugmentationSpec,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Photometric ops + normalisation of one batch of same-size CUDA views:
    crops uint8 [N, S, S, 3], rows [N, param_row.WIDTH] -> [N, 3, S, S] in the spec's output
    dtype (written into ``out`` when given). See ``finish_many``."""
    return finish_many([(crops, rows)], spec, None if out is None else [out])[0]
