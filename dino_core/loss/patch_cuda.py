"""The iBOT patch loss on CUDA tensors: ``csrc/patch_ce_kernel.cu`` through the kernel library.

The kernel (C interface ``csrc/patch_ce_kernel.h``, math ``csrc/patch_ce_math.h`` shared with
the host twin ``csrc/patch_ce_host.cpp``) is built into ``libdino_fast_kernels.so`` with the
DINO loss (``pipelines/kernels/build.py``); this module declares ``patch_ce_rows``, allocates
outputs with torch and passes data pointers and the current stream. No host sync: the scalar
loss is a torch sum of the per-row terms on the device.

One block per token row reads the row, writes its loss term ``w_i (m_i lse(x_i) - <q_i, x_i>)``
and, where the gradient is due, ``w_i (m_i softmax(x_i) - q_i) / tau`` in the logits' dtype
(``patch_ce``'s module docstring has the math). Where the gradient is written, as for the DINO
loss kernels (``cuda.py``):

- in the forward (default for float32, bfloat16, float64): the row is read once per step; the
  backward multiplies by the upstream gradient in place (the DINO loss's rescale kernel,
  which returns at once when it is 1, decided on the device). One backward per forward.
- in the backward (default for float16): the forward writes the row terms only; the backward
  reads the logits again and folds the upstream gradient in before rounding, so a
  GradScaler's factor keeps small float16 gradients from flushing to zero.

The same glue runs on the CPU emulation of the library (``library.use_emulation``; tests
marked ``device_emulation``) with CPU tensors and stream 0. ``unavailable_reason`` says why
the kernel cannot run (no library for this GPU, or a library without ``patch_ce_rows``);
``ibot.resolve_impl``'s ``auto`` then runs the fused torch path.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from pipelines.kernels import library

from . import cuda
from .cuda import KernelOptions
from .patch_ce import check_inputs
from .reference import accumulation_dtype

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
SYMBOL = "patch_ce_rows"

_P, _I, _D = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
_ptr = cuda._ptr


@functools.cache
def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.patch_ce_rows.argtypes = [_I, _P, _P, _P, _P, _P, _P, _I, _I, _D, _D, _P]
    lib.patch_ce_rows.restype = _I
    return lib


def _lib() -> ctypes.CDLL:
    """The library with ``patch_ce_rows`` and the DINO loss's functions (``dino_loss_rescale``,
    ``dino_loss_error_string``) declared."""
    return _declared(cuda._lib())


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (the selected library does not load, or predates the
    patch-loss kernel), or None when it can."""
    reason = library.unavailable_reason()
    if reason is not None:
        return reason
    if not hasattr(library.load(), SYMBOL):
        return (f"the kernel library {library.library_path()} has no {SYMBOL} (built before "
                f"the patch-loss kernel): rebuild it with {library.build_command()}")
    return None


def _check(code: int, what: str) -> None:
    if code != 0:
        message = _lib().dino_loss_error_string(code).decode()
        raise RuntimeError(f"iBOT patch-loss CUDA kernel: {what} failed: {message}")


def _launch(student: torch.Tensor, q: torch.Tensor, w: torch.Tensor, grad, row_loss,
            upstream, student_temp: float, what: str) -> None:
    rows, dim = student.shape
    with library.device_scope(student.device):
        code = _lib().patch_ce_rows(_DTYPE_CODES[student.dtype], _ptr(student), _ptr(q),
                                    _ptr(w), _ptr(grad), _ptr(row_loss), _ptr(upstream), rows,
                                    dim, 1.0 / student_temp, 1.0 / student_temp,
                                    library.stream_handle(student.device))
    _check(code, what)


class CudaPatchCEFunction(torch.autograd.Function):
    """``(student [M, K], q [M, K], w [M], student_temp, options) -> loss`` by the kernel
    (see the module docstring for where the gradient is written)."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, w: torch.Tensor,
                student_temp: float, options: KernelOptions) -> torch.Tensor:
        in_forward = options.grad_in_forward(student.dtype)
        grad = None
        if ctx.needs_input_grad[0] and in_forward:
            grad = torch.empty_like(student)
        row_loss = student.new_empty(student.shape[0], dtype=q.dtype)
        _launch(student, q, w, grad, row_loss, None, student_temp, "the forward launch")
        ctx.student_temp, ctx.acc, ctx.in_forward = student_temp, q.dtype, in_forward
        ctx.grad = grad
        if not in_forward:
            ctx.save_for_backward(student, q, w)
        return row_loss.sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        upstream = cuda.backward_upstream(grad_loss, ctx.acc, "patch loss")
        if ctx.in_forward:
            if ctx.grad is None:
                raise RuntimeError("the CUDA patch loss supports one backward per forward "
                                   "(its gradient is scaled in place by the upstream gradient)")
            grad, ctx.grad = ctx.grad, None
            cuda.rescale_in_place(grad, upstream)
        else:
            student, q, w = ctx.saved_tensors
            grad = torch.empty_like(student)
            _launch(student, q, w, grad, None, upstream, ctx.student_temp,
                    "the backward launch")
        return grad, None, None, None, None


def cuda_patch_ce(student: torch.Tensor, teacher_probs: torch.Tensor, weight: torch.Tensor,
                  student_temp: float, options: KernelOptions = KernelOptions()
                  ) -> torch.Tensor:
    """The patch loss by the CUDA kernel (``patch_ce``'s contract): a 0-dim tensor in the
    accumulation dtype, the gradient to ``student`` only. All on one CUDA device (CPU tensors
    for the emulation), else a ``ValueError`` naming the tensor. ``options``: only
    ``gradient_in_forward`` applies."""
    check_inputs(student, teacher_probs, weight)
    library.check_tensors("cuda_patch_ce", student=student, teacher_probs=teacher_probs,
                          weight=weight)
    if student.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the CUDA patch loss supports {SUPPORTED_DTYPES}, got {student.dtype}")
    if student.shape[1] == 0 and student.shape[0] > 0:
        raise ValueError("the CUDA patch loss needs K >= 1 prototypes, got K = 0")
    acc = accumulation_dtype(student.dtype)
    with torch.autocast(student.device.type, enabled=False):
        return CudaPatchCEFunction.apply(student.contiguous(),
                                         teacher_probs.detach().to(acc).contiguous(),
                                         weight.detach().to(acc).contiguous(), student_temp,
                                         options)
