"""``finish_views`` / ``finish_many``: the one call every executor makes to finish uint8 views.

Geometry (decode, crop, resize, flip) differs per executor; what follows is the same for
all: a batch of same-size uint8 views and their ``param_row`` rows go in, normalised views
in the spec's output dtype come out. A loader finishes a whole multi-crop batch (one batch
per view size) with one ``finish_many`` call. Which implementation runs is chosen here,
once per process, and logged in one line:

    CUDA device  the fused CUDA kernel (``cuda.py``) when the kernel library loads, else the
                 torch ops (``torch_ops``, no host sync)
    CPU          the fused numba kernel (``cpu_kernel``) when numba is installed, else the
                 torch ops
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import numpy as np
import torch

from ..spec import AugmentationSpec
from . import torch_ops

log = logging.getLogger(__name__)

IMPLS = ("auto", "cuda", "cpu_kernel", "torch")
Finisher = Callable[[torch.Tensor, torch.Tensor, AugmentationSpec], torch.Tensor]


def finish_views(crops: torch.Tensor, rows: torch.Tensor | np.ndarray, spec: AugmentationSpec,
                 impl: str = "auto") -> torch.Tensor:
    """Photometric ops + normalisation of one batch of same-size views.

    crops: uint8 ``[N, S, S, 3]`` (channels last, each view already cropped, resized and
        flipped), on the CPU or a CUDA device.
    rows: ``[N, param_row.WIDTH]`` parameter rows (box and flip columns ignored), float32 or
        float64, on the crops' device (a numpy array is taken for CPU crops).
    impl: "auto" (see the module docstring), or one of "cuda", "cpu_kernel", "torch" to
        force an implementation (an error says why when it cannot run here).
    Returns ``[N, 3, S, S]`` in ``spec.output_dtype`` on the crops' device.
    """
    crops, rows = _checked(crops, rows, "finish_views")
    if crops.shape[0] == 0:
        return _empty(crops, spec)
    return finisher(crops.device.type, impl)(crops, rows, spec)


def finish_many(batches: Sequence[tuple[torch.Tensor, torch.Tensor | np.ndarray]],
                spec: AugmentationSpec, impl: str = "auto") -> list[torch.Tensor]:
    """``finish_views`` of several batches of views, one size per batch, on one device: what
    a loader calls once per multi-crop batch, e.g. with the global views ``[2B, G, G, 3]``
    and the local views ``[10B, L, L, 3]`` and their rows.

    The CUDA kernel finishes every batch in one call (two launches, ``cuda.finish_many``);
    the numba kernel and the torch ops finish them one after the other. Arguments and
    results per batch are ``finish_views``'; returns one ``[N_i, 3, S_i, S_i]`` per batch.
    """
    checked = [_checked(crops, rows, "finish_many") for crops, rows in batches]
    devices = {crops.device for crops, _ in checked}
    if len(devices) > 1:
        raise ValueError(f"finish_many: every batch must be on one device, got "
                         f"{sorted(str(d) for d in devices)}")
    work = [(crops, rows) for crops, rows in checked if crops.shape[0] > 0]
    if not work:
        return [_empty(crops, spec) for crops, _ in checked]
    device_type = work[0][0].device.type
    if resolved(device_type, impl) == "cuda":
        from . import cuda
        finished = iter(cuda.finish_many(work, spec))
    else:
        one = finisher(device_type, impl)
        finished = iter([one(crops, rows, spec) for crops, rows in work])
    return [next(finished) if crops.shape[0] > 0 else _empty(crops, spec)
            for crops, _ in checked]


def _checked(crops: torch.Tensor, rows: torch.Tensor | np.ndarray, what: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops, rows as a tensor on the crops' device), after checking their shapes."""
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[-1] != 3:
        raise ValueError(f"{what} takes uint8 [N, S, S, 3] crops, got "
                         f"{crops.dtype} {tuple(crops.shape)}")
    if isinstance(rows, np.ndarray):
        rows = torch.from_numpy(rows)
    if rows.dim() != 2 or rows.shape[0] != crops.shape[0]:
        raise ValueError(f"{what} needs one parameter row per view: {crops.shape[0]} "
                         f"views, rows {tuple(rows.shape)}")
    return crops, rows.to(crops.device)


def _empty(crops: torch.Tensor, spec: AugmentationSpec) -> torch.Tensor:
    """The finish of no views: ``[0, 3, S, S]`` in the spec's output dtype."""
    return torch.empty((0, 3, *crops.shape[1:3]), dtype=getattr(torch, spec.output_dtype),
                       device=crops.device)


@functools.cache
def resolved(device_type: str, impl: str = "auto") -> str:
    """The implementation ``impl`` means for a device type ("cpu" / "cuda"): "auto" resolved
    once per process and logged; a forced one checked (an error says why it cannot run)."""
    if impl not in IMPLS:
        raise ValueError(f"photometric impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl, why = _auto(device_type)
        log.info("photometric finish on %s: %s (%s)", device_type, impl, why)
    if impl == "cuda":
        if device_type != "cuda":
            raise ValueError("photometric impl 'cuda' needs CUDA crops")
        from . import cuda
        reason = cuda.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"the CUDA photometric kernel is unavailable: {reason}")
    if impl == "cpu_kernel" and device_type != "cpu":
        raise ValueError("photometric impl 'cpu_kernel' needs CPU crops")
    return impl


def finisher(device_type: str, impl: str = "auto") -> Finisher:
    """The one-batch implementation for a device type ("cpu" / "cuda")."""
    impl = resolved(device_type, impl)
    if impl == "cuda":
        from . import cuda
        return cuda.finish
    if impl == "cpu_kernel":
        return _cpu_kernel
    return torch_ops.finish_rows


def _auto(device_type: str) -> tuple[str, str]:
    if device_type == "cuda":
        try:
            from . import cuda
            reason = cuda.unavailable_reason()
        except ImportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        return ("cuda", "kernel library loaded") if reason is None else ("torch", reason)
    try:
        import numba  # noqa: F401
    except ImportError:
        return "torch", "numba is not installed"
    return "cpu_kernel", "numba"


def _cpu_kernel(crops: torch.Tensor, rows: torch.Tensor, spec: AugmentationSpec
                ) -> torch.Tensor:
    from .cpu_kernel import kernel_consts, photometric_batch
    consts = kernel_consts(spec)
    n, size = crops.shape[0], crops.shape[1]
    out = np.empty((n, 3, size, size), np.float32)
    photometric_batch(crops.numpy(), rows.to(torch.float64).numpy(), consts.norm,
                      consts.solarize_at, out)
    result = torch.from_numpy(out)
    dtype = getattr(torch, spec.output_dtype)
    return result if dtype == torch.float32 else result.to(dtype)
