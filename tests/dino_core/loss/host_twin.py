"""The host twin of the DINO loss kernels (``csrc/dino_loss_host.cpp``), built with g++ and
called through ctypes like the CUDA library: ``build_twin(folder)``, then ``twin_loss``."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from pipelines.kernels import build

SOURCE = Path(build.ROOT) / "dino_core" / "loss" / "csrc" / "dino_loss_host.cpp"
_CODES = {torch.float32: 0, torch.float64: 3}


def build_twin(folder: Path) -> ctypes.CDLL:
    """Compile the twin into ``folder`` (warnings are errors) and declare its function."""
    lib = ctypes.CDLL(str(build.build_host((SOURCE,), folder / "libdino_loss_host.so",
                                           extra_flags=("-Werror",))))
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.dino_loss_host_forward.argtypes = [i, p, p, p, p, p, p, i, i, i, i, d, d, d]
    lib.dino_loss_host_forward.restype = i
    return lib


def twin_loss(lib: ctypes.CDLL, student: torch.Tensor, teacher: torch.Tensor,
              center: torch.Tensor, teacher_temp: float, ncrops: int, student_temp: float,
              upstream: float = 1.0, chunk: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, gradient of upstream * loss, row losses [V*B], stats [(V+4)*B]) of CPU logits
    (float32 or float64, one dtype for all three inputs), ``chunk`` columns per simulated
    block (default: the whole row)."""
    batch, dim = teacher.shape[0] // 2, student.shape[1]
    n_pairs = 2 * ncrops - 2
    student, teacher = student.contiguous(), teacher.contiguous()
    center = center.reshape(-1).to(student.dtype).contiguous()
    grad = torch.empty_like(student)
    row_loss = student.new_empty(ncrops * batch)
    stats = student.new_empty((ncrops + 4) * batch)
    code = lib.dino_loss_host_forward(
        _CODES[student.dtype], student.data_ptr(), teacher.data_ptr(), center.data_ptr(),
        grad.data_ptr(), row_loss.data_ptr(), stats.data_ptr(), ncrops, batch, dim,
        chunk or dim, 1.0 / student_temp, 1.0 / teacher_temp,
        upstream / (student_temp * n_pairs * batch))
    if code != 0:
        raise RuntimeError(f"dino_loss_host_forward returned {code}")
    return row_loss.sum() / (n_pairs * batch), grad, row_loss, stats
