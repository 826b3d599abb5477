"""The C interface of the fused photometric kernel (``csrc/photometric_api.h``) for ctypes.

The CUDA library (``dino_fast_kernels``, functions ``dino_photometric_*``) and the host twin
(functions ``dino_photometric_host_*``) export the same functions; ``bind`` declares them on
a loaded library and checks that its parameter-row layout is this checkout's, and ``run``
finishes a list of segments (views of one size each) in one call. Tensors live where the
library works (CUDA memory for the kernel, host memory for the twin); nothing here syncs.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..sampling import JITTER_OPS
from ..sampling.param_row import NAMES, WIDTH
from .constants import KernelConsts

OUT_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ROW_CODES = {torch.float32: 0, torch.float64: 3}
LAYOUT = ",".join(NAMES) + ";" + ",".join(JITTER_OPS)  # photometric.cuh's PHOTO_LAYOUT

_P, _I, _F, _LL = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_longlong
_FINISH_ARGS = [_I, ctypes.POINTER(_P), ctypes.POINTER(_P), ctypes.POINTER(_P),
                ctypes.POINTER(_I), ctypes.POINTER(_I), _I, _I, ctypes.POINTER(_F), _F, _I, _P,
                _LL, _P]


class AbiMismatch(RuntimeError):
    """A library whose functions or row layout do not fit this checkout."""


@dataclass(frozen=True)
class Abi:
    """The bound functions of one library: ``finish`` and ``workspace_floats`` take the C
    arguments; ``max_segments`` and ``max_radius`` are the compiled limits."""

    name: str
    finish: ctypes._CFuncPtr
    workspace_floats: ctypes._CFuncPtr
    error_string: ctypes._CFuncPtr
    max_segments: int
    max_radius: int

    def error(self, code: int) -> str:
        return f"{self.name} failed: {self.error_string(code).decode()} (code {code})"


def bind(lib: ctypes.CDLL, prefix: str) -> Abi:
    """Declare ``<prefix>finish`` & co. on ``lib``; raise ``AbiMismatch`` naming what differs."""
    try:
        fns = {name: getattr(lib, prefix + name) for name in (
            "finish", "workspace_floats", "error_string", "layout", "max_segments", "max_radius")}
    except AttributeError as exc:
        name = getattr(lib, "_name", lib)
        raise AbiMismatch(f"{name} has no photometric kernel ({exc})") from exc
    fns["finish"].argtypes, fns["finish"].restype = _FINISH_ARGS, _I
    fns["workspace_floats"].argtypes = [_I, ctypes.POINTER(_I), ctypes.POINTER(_I)]
    fns["workspace_floats"].restype = _LL
    fns["error_string"].argtypes, fns["error_string"].restype = [_I], ctypes.c_char_p
    fns["layout"].argtypes, fns["layout"].restype = [], ctypes.c_char_p
    for name in ("max_segments", "max_radius"):
        fns[name].argtypes, fns[name].restype = [], _I
    layout = fns["layout"]().decode()
    if layout != LAYOUT:
        raise AbiMismatch(f"{getattr(lib, '_name', lib)} reads parameter rows as {layout!r}, "
                          f"pipelines/sampling/param_row.py writes {LAYOUT!r}: rebuild it")
    if WIDTH != len(NAMES):
        raise AbiMismatch("param_row.WIDTH != len(NAMES)")
    return Abi(prefix.rstrip("_"), fns["finish"], fns["workspace_floats"], fns["error_string"],
               int(fns["max_segments"]()), int(fns["max_radius"]()))


@dataclass(frozen=True)
class Constants:
    """A spec's constants as the C call takes them (built once per spec)."""

    norm: ctypes.Array
    solarize_at: float
    max_radius: int


def constants(consts: KernelConsts) -> Constants:
    norm = (ctypes.c_float * 6)(*np.asarray(consts.norm, np.float32).reshape(-1).tolist())
    return Constants(norm, float(consts.solarize_at), int(consts.max_radius))


def run(abi: Abi, crops: Sequence[torch.Tensor], rows: Sequence[torch.Tensor],
        outs: Sequence[torch.Tensor], const: Constants, stream: int | None = 0) -> None:
    """Finish segment i: ``crops[i]`` uint8 [n_i, S_i, S_i, 3] -> ``outs[i]`` [n_i, 3, S_i, S_i]
    with ``rows[i]`` [n_i, WIDTH]; all contiguous on the library's device, one rows dtype
    (float32 or float64) and one output dtype for all. At most ``abi.max_segments`` segments.
    The workspace is allocated here (torch's caching allocator on a GPU: no sync)."""
    k = len(crops)
    counts = (_I * k)(*[int(c.shape[0]) for c in crops])
    sizes = (_I * k)(*[int(c.shape[1]) for c in crops])
    floats = abi.workspace_floats(k, counts, sizes)
    workspace = torch.empty(max(1, floats), dtype=torch.float32, device=crops[0].device)
    code = abi.finish(k, (_P * k)(*[c.data_ptr() for c in crops]),
                      (_P * k)(*[r.data_ptr() for r in rows]),
                      (_P * k)(*[o.data_ptr() for o in outs]), counts, sizes,
                      ROW_CODES.get(rows[0].dtype, -1), OUT_CODES.get(outs[0].dtype, -1),
                      const.norm, const.solarize_at, const.max_radius, workspace.data_ptr(),
                      floats, stream)
    if code != 0:
        raise RuntimeError(abi.error(code))


def check_views(crops: torch.Tensor, rows: torch.Tensor, what: str) -> None:
    """One clear error for crops that are not uint8 [N, S, S, 3] or rows that are not
    [N, WIDTH] on the same device."""
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[-1] != 3 \
            or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"{what} takes uint8 [N, S, S, 3] crops, got {crops.dtype} "
                         f"{tuple(crops.shape)}")
    if rows.dim() != 2 or rows.shape != (crops.shape[0], WIDTH):
        raise ValueError(f"{what} needs rows [N, {WIDTH}] (param_row) for {crops.shape[0]} "
                         f"views, got {tuple(rows.shape)}")
    if rows.device != crops.device:
        raise ValueError(f"{what}: rows on {rows.device}, crops on {crops.device}")


def kernel_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows as the kernel reads them: float32 or float64, contiguous (no copy when they are)."""
    if rows.dtype not in ROW_CODES:
        rows = rows.to(torch.float32)
    return rows.contiguous()


def finish_batches(abi: Abi, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   const: Constants, dtype: torch.dtype, stream: int | None = 0,
                   outs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Each (crops, rows) batch finished into ``dtype`` [N, 3, S, S] (or into ``outs``), in
    as few calls as ``abi.max_segments`` allows. Inputs are checked by the caller."""
    crops = [c.contiguous() for c, _ in batches]
    rows = [kernel_rows(r) for _, r in batches]
    if len({r.dtype for r in rows}) > 1:  # one rows dtype per call; float64 holds both
        rows = [r.to(torch.float64) for r in rows]
    if outs is None:
        outs = [torch.empty((c.shape[0], 3, c.shape[1], c.shape[2]), dtype=dtype,
                            device=c.device) for c in crops]
    for lo in range(0, len(crops), abi.max_segments):
        hi = lo + abi.max_segments
        run(abi, crops[lo:hi], rows[lo:hi], outs[lo:hi], const, stream)
    return list(outs)
