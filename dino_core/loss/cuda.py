"""The DINO loss on CUDA tensors: the kernels of ``csrc/`` through the kernel library, by ctypes.

``csrc/dino_loss_kernel.cu`` (C interface ``csrc/dino_loss_kernel.h``; kernels
``csrc/dino_loss_kernels.cuh``; math ``csrc/dino_loss_math.h``, which the host twin
``csrc/dino_loss_host.cpp`` shares) is compiled ahead of time into ``libdino_fast_kernels.so``
(``pipelines/kernels``); this module declares its functions, allocates outputs with torch and
passes data pointers and ``torch.cuda.current_stream().cuda_stream``. No host sync.

The same glue runs on the CPU emulation of the library (``pipelines.kernels.library``'s
``use_emulation``; tests marked ``device_emulation``): the kernels' own device code on CPU
threads, with CPU tensors and stream 0, so the plan choice, the scalar fallback, the
shared-memory opt-in and the cluster sizes are exercised without a GPU. Every tensor must be
where the selected library runs (``library.check_tensors``: one CUDA device, or the CPU for
the emulation); anything else is a ``ValueError`` naming the tensor.

Memory traffic per training step (forward + backward), the point of the design. With
``S = V*B*K`` student logits, ``2*B*K`` teacher logits, and ``e`` bytes per logit, the floor is
reading the student and teacher logits once and writing the gradient once,
``(2 S + 2 B K) e``. One forward launch per call reads each sample's teacher rows once for all
its views (a cluster of blocks per sample, each over a column chunk of every row; row
statistics combined across the cluster) and the student logits once (kept in shared memory
while the block needs them). Where the gradient is written:

- gradient in the forward (default for float32, bfloat16, float64): the forward writes the
  gradient for an upstream gradient of 1 right away, while the logits are on chip, so the
  step reads them once: the floor. The backward multiplies by the upstream gradient ``u``
  in place, read on the device; with ``u == 1`` (a plain ``loss.backward()``) every block of
  that launch returns after one load. Any other ``u`` costs a read and a write of the
  gradient, and rounds twice (harmless in bfloat16's float32 range).
- gradient in the backward (default for float16): the forward saves per-row statistics
  (``[(V+4)*B]`` numbers) and the backward writes the gradient in one pass with ``u`` folded
  in before rounding, so a GradScaler's factor keeps small float16 gradients from flushing
  to zero. It reads the logits twice per step.

``overwrite_logits=True`` writes the gradient over the student logits (within the contract of
:func:`dino_core.loss.fused.fused_dino_loss`): with the gradient in the forward, the logits
hold the gradient as soon as the forward returns, and their autograd version is bumped
there, so another node that saved them, or a second backward, fails with torch's "modified by
an inplace operation" error instead of reading a gradient. The out-of-place variant scales
its saved gradient in place, so it supports one backward per forward and says so otherwise.
Neither variant has a double backward.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from pipelines.kernels import library

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
MAX_CLUSTERS = 16


class Plan(ctypes.Structure):
    """``DinoLossPlan``: blocks per sample, columns per block, student kept in shared memory."""

    _fields_ = [("clusters", ctypes.c_int), ("chunk", ctypes.c_int), ("resident", ctypes.c_int),
                ("smem_bytes", ctypes.c_int)]


@dataclass(frozen=True)
class KernelOptions:
    """How the kernels run; the defaults are the fast choices, the others exist for tests.

    ``gradient_in_forward``: None = every dtype but float16 (see the module docstring).
    ``max_clusters``: blocks per sample at most (1 = no clusters). ``allow_resident``: False
    makes the kernel re-read the logits from memory instead of keeping them on chip.
    """

    gradient_in_forward: bool | None = None
    max_clusters: int = MAX_CLUSTERS
    allow_resident: bool = True

    def grad_in_forward(self, dtype: torch.dtype) -> bool:
        if self.gradient_in_forward is not None:
            return self.gradient_in_forward
        return dtype != torch.float16


_P = ctypes.c_void_p
_I, _D = ctypes.c_int, ctypes.c_double


def _lib() -> ctypes.CDLL:
    """The selected kernel library with this module's function signatures declared."""
    return _declared(library.load())


@functools.cache
def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.dino_loss_plan.argtypes = [_I, _I, _I, _I, _I, ctypes.POINTER(Plan)]
    lib.dino_loss_forward.argtypes = [_I, ctypes.POINTER(Plan), _P, _P, _P, _P, _P, _P,
                                      _I, _I, _I, _D, _D, _D, _P]
    lib.dino_loss_backward.argtypes = [_I, ctypes.POINTER(Plan), _P, _P, _P, _P, _P, _P,
                                       _I, _I, _I, _D, _D, _D, _P]
    lib.dino_loss_rescale.argtypes = [_I, _P, ctypes.c_longlong, _P, _P]
    lib.dino_loss_error_string.argtypes = [_I]
    lib.dino_loss_error_string.restype = ctypes.c_char_p
    for fn in (lib.dino_loss_plan, lib.dino_loss_forward, lib.dino_loss_backward,
               lib.dino_loss_rescale):
        fn.restype = _I
    return lib


def unavailable_reason() -> str | None:
    """None when the selected kernel library loads (for this GPU, or the CPU emulation),
    else why not and what to do."""
    return library.unavailable_reason()


def _check(code: int, what: str) -> None:
    if code != 0:
        message = _lib().dino_loss_error_string(code).decode()
        raise RuntimeError(f"DINO loss CUDA kernel: {what} failed: {message}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rescale_in_place(grad: torch.Tensor, upstream: torch.Tensor) -> None:
    """``grad *= upstream[0]`` by the library's rescale kernel (``upstream``: ``[1]`` in the
    accumulation dtype, read on the device; every block returns at once when it is 1)."""
    with library.device_scope(grad.device):
        code = _lib().dino_loss_rescale(_DTYPE_CODES[grad.dtype], _ptr(grad), grad.numel(),
                                        _ptr(upstream), library.stream_handle(grad.device))
    _check(code, "the gradient rescale launch")


def plan_for(device_index: int | None, dtype: torch.dtype, ncrops: int, dim: int,
             max_clusters: int = MAX_CLUSTERS, allow_resident: bool = True) -> Plan:
    """The kernels' layout for this shape on this device (None: the CPU emulation), chosen
    once per library (it sets kernel attributes: call it outside CUDA-graph capture; the
    loss's first call does)."""
    return _plan(_lib(), device_index, dtype, ncrops, dim, max_clusters, allow_resident)


@functools.cache
def _plan(lib: ctypes.CDLL, device_index: int | None, dtype: torch.dtype, ncrops: int,
          dim: int, max_clusters: int, allow_resident: bool) -> Plan:
    plan = Plan()
    device = torch.device("cpu") if device_index is None else torch.device("cuda", device_index)
    with library.device_scope(device):
        code = lib.dino_loss_plan(_DTYPE_CODES[dtype], ncrops, dim, max_clusters,
                                  int(allow_resident), ctypes.byref(plan))
    _check(code, f"planning ({dtype}, ncrops={ncrops}, K={dim})")
    return plan


def backward_upstream(grad_loss: torch.Tensor, acc: torch.dtype, what: str) -> torch.Tensor:
    """The upstream gradient as ``[1]`` in the accumulation dtype ``acc``, read by the kernels
    on the device (no host sync); a double backward (``create_graph=True``) is refused."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the CUDA {what} has no double backward (create_graph=True): "
                           "use impl='fused'")
    return grad_loss.detach().reshape(1).to(acc).contiguous()


class CudaDINOLossFunction(torch.autograd.Function):
    """``(student [V*B, K], teacher [2*B, K], center [K], ncrops, student_temp, teacher_temp,
    overwrite_logits, options) -> loss``: teacher softmax, loss and gradient by the kernels
    (see the module docstring for where the gradient is written)."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                ncrops: int, student_temp: float, teacher_temp: float,
                overwrite_logits: bool, options: KernelOptions) -> torch.Tensor:
        batch, dim = teacher.shape[0] // 2, student.shape[1]
        n_pairs = 2 * ncrops - 2
        plan = plan_for(student.device.index, student.dtype, ncrops, dim,
                        options.max_clusters, options.allow_resident)
        in_forward = options.grad_in_forward(student.dtype)
        needs_grad = ctx.needs_input_grad[0]
        row_loss = student.new_empty(ncrops * batch, dtype=center.dtype)
        grad = stats = None
        if needs_grad and in_forward:
            grad = student if overwrite_logits else torch.empty_like(student)
        elif needs_grad:
            stats = student.new_empty((ncrops + 4) * batch, dtype=center.dtype)
        ctx.scalars = (ncrops, batch, dim, 1.0 / student_temp, 1.0 / teacher_temp,
                       1.0 / (student_temp * n_pairs * batch))
        with library.device_scope(student.device):
            code = _lib().dino_loss_forward(
                _DTYPE_CODES[student.dtype], ctypes.byref(plan), _ptr(student), _ptr(teacher),
                _ptr(center), _ptr(grad), _ptr(row_loss), _ptr(stats), *ctx.scalars,
                library.stream_handle(student.device))
        _check(code, "the forward launch")
        ctx.plan, ctx.in_forward, ctx.overwrite = plan, in_forward, overwrite_logits
        ctx.acc, ctx.used = center.dtype, False
        if grad is student:
            torch.autograd.graph.increment_version(student)  # written through a raw pointer
        if stats is not None:
            # The loss's center is updated in place after this call: keep the one used here.
            ctx.save_for_backward(student, teacher, center.clone(), stats)
        elif overwrite_logits:
            ctx.save_for_backward(student)  # after the bump: a second unpack fails
        else:
            ctx.grad = grad
        return row_loss.sum() / (n_pairs * batch)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        upstream = backward_upstream(grad_loss, ctx.acc, "DINO loss")
        if ctx.in_forward:
            grad = CudaDINOLossFunction._scaled_saved_gradient(ctx)
            rescale_in_place(grad, upstream)
        else:
            student, teacher, center, stats = ctx.saved_tensors
            grad = student if ctx.overwrite else torch.empty_like(student)
            with library.device_scope(student.device):
                code = _lib().dino_loss_backward(
                    _DTYPE_CODES[student.dtype], ctypes.byref(ctx.plan), _ptr(student),
                    _ptr(teacher), _ptr(center), _ptr(stats), _ptr(upstream), _ptr(grad),
                    *ctx.scalars, library.stream_handle(student.device))
            _check(code, "the backward launch")
        if ctx.overwrite:
            torch.autograd.graph.increment_version(grad)  # the kernels wrote through a pointer
        return grad, None, None, None, None, None, None, None

    @staticmethod
    def _scaled_saved_gradient(ctx) -> torch.Tensor:
        """The gradient the forward wrote, once (it is scaled in place)."""
        if ctx.overwrite:
            (grad,) = ctx.saved_tensors  # checks the logits' version: one backward only
            return grad
        if ctx.used:
            raise RuntimeError("the CUDA DINO loss supports one backward per forward (its "
                               "gradient is scaled in place by the upstream gradient)")
        ctx.used = True
        return ctx.grad


def cuda_dino_loss(student_output: torch.Tensor, teacher_output: torch.Tensor,
                   center: torch.Tensor, teacher_temp: float, ncrops: int, student_temp: float,
                   overwrite_logits: bool = False,
                   options: KernelOptions = KernelOptions()) -> torch.Tensor:
    """The DINO loss of CUDA student logits ``[ncrops*B, K]`` against teacher logits
    ``[2*B, K]`` with ``center [1, K]`` (no gradient to the teacher or the center). Returns a
    0-dim tensor in the accumulation dtype (float64 for float64 logits, else float32).
    All three on one CUDA device (CPU tensors for the emulation), else a ``ValueError``
    naming the tensor.

    ``overwrite_logits=True``: ``student_output`` (or its contiguous copy) receives the
    gradient (see the module docstring for when)."""
    library.check_tensors("cuda_dino_loss", student_output=student_output,
                          teacher_output=teacher_output, center=center)
    if student_output.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the CUDA DINO loss supports {SUPPORTED_DTYPES}, "
                        f"got {student_output.dtype}")
    if teacher_output.dtype != student_output.dtype:
        raise TypeError(f"student logits are {student_output.dtype}, teacher logits "
                        f"{teacher_output.dtype}: the kernels take one dtype")
    acc = _acc(student_output.dtype)
    return CudaDINOLossFunction.apply(
        student_output.contiguous(), teacher_output.detach().contiguous(),
        center.detach().reshape(-1).to(acc).contiguous(), ncrops, student_temp, teacher_temp,
        overwrite_logits, options)
