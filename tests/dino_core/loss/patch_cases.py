"""Inputs and the float64 reference for the patch-loss kernel's tests (emulation, host twin,
GPU), and the host twin of the kernel (``csrc/patch_ce_host.cpp``) built with g++."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from dino_core.loss.patch_ce import reference_patch_ce
from pipelines.kernels import build

STUDENT_TEMP = 0.1
TWIN_SOURCE = Path(build.ROOT) / "dino_core" / "loss" / "csrc" / "patch_ce_host.cpp"
_TWIN_CODES = {torch.float32: 0, torch.float64: 3}


def make_inputs(rows: int, dim: int, dtype: torch.dtype, seed: int = 0):
    """Student logits ``[rows, dim]`` in ``dtype``, teacher probabilities (rows summing to 1,
    sharp like a teacher's) and positive weights, both float64."""
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(rows, dim, generator=gen, dtype=torch.float64) * 2).to(dtype)
    q = torch.softmax(torch.randn(rows, dim, generator=gen, dtype=torch.float64) / 0.3, dim=-1)
    weight = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.1
    return student, q, weight


def reference_run(student, q, weight, upstream: float):
    """Loss and gradient of ``upstream * loss`` by ``reference_patch_ce`` in float64."""
    s = student.double().clone().requires_grad_()
    loss = reference_patch_ce(s, q, weight, STUDENT_TEMP)
    (loss * upstream).backward()
    return loss.detach(), s.grad


def grad_unit(weight, upstream: float) -> float:
    """The gradient's scale |u| max w / tau: its entries are that times an O(1) difference."""
    return abs(upstream) * (weight.abs().max().item() if weight.numel() else 1.0) / STUDENT_TEMP


def build_twin(folder: Path) -> ctypes.CDLL:
    """Compile the host twin into ``folder`` (warnings are errors) and declare it."""
    lib = ctypes.CDLL(str(build.build_host((TWIN_SOURCE,), folder / "libpatch_ce_host.so",
                                           extra_flags=("-Werror",))))
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.patch_ce_host_rows.argtypes = [i, p, p, p, p, p, i, i, i, d, d]
    lib.patch_ce_host_rows.restype = i
    return lib


def twin_run(lib: ctypes.CDLL, student, q, weight, upstream: float, lanes: int):
    """(loss, gradient of upstream * loss) by the twin in the logits' dtype (float32 or
    float64), each row's columns dealt to ``lanes`` simulated threads."""
    rows, dim = student.shape
    s = student.contiguous()
    q, weight = q.to(s.dtype).contiguous(), weight.to(s.dtype).contiguous()
    grad, row_loss = torch.empty_like(s), s.new_empty(rows)
    code = lib.patch_ce_host_rows(_TWIN_CODES[s.dtype], s.data_ptr(), q.data_ptr(),
                                  weight.data_ptr(), grad.data_ptr(), row_loss.data_ptr(), rows,
                                  dim, lanes, 1.0 / STUDENT_TEMP, upstream / STUDENT_TEMP)
    if code != 0:
        raise RuntimeError(f"patch_ce_host_rows returned {code}")
    return row_loss.sum(), grad
