"""The DINO loss CUDA extension: built on first use, cached, with a reason when unavailable.

``csrc/dino_loss_kernel.cu`` holds the kernels (CUDA headers only; ``nvcc -c`` checks it on
any machine) and ``csrc/dino_loss_binding.cpp`` the thin torch binding. They are compiled
with ``torch.utils.cpp_extension.load`` the first time a CUDA loss runs; torch caches the
build under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and rebuilds
only when a source changes. No Triton, no torch.compile.
"""
from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
KERNEL_SOURCE = CSRC / "dino_loss_kernel.cu"
BINDING_SOURCE = CSRC / "dino_loss_binding.cpp"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _prerequisite_missing() -> str | None:
    """Why the extension cannot be built here without trying, or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return "the CUDA toolkit (nvcc) was not found; set CUDA_HOME"
    if shutil.which("ninja") is None:
        return "ninja is not installed (torch's extension builder needs it: pip install ninja)"
    return None


@functools.cache
def _build() -> tuple[ModuleType | None, str | None]:
    """Build (or load the cached build of) the extension once per process."""
    missing = _prerequisite_missing()
    if missing is not None:
        return None, missing
    from torch.utils.cpp_extension import load
    try:
        module = load(name="dino_fast_loss_cuda", sources=[str(BINDING_SOURCE), str(KERNEL_SOURCE)],
                      extra_include_paths=[str(CSRC)], extra_cflags=["-O3"],
                      extra_cuda_cflags=["-O3"], verbose=False)
    except Exception as exc:  # a compiler or linker failure: report it, fall back
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"building the CUDA extension failed: {type(exc).__name__}: {first_line}"
        log.warning("dino loss: %s", reason)
        return None, reason
    return module, None


def load_extension() -> ModuleType:
    """The compiled extension; raises RuntimeError naming why it is unavailable."""
    module, reason = _build()
    if module is None:
        raise RuntimeError(f"the DINO loss CUDA extension is unavailable: {reason}")
    return module


def unavailable_reason() -> str | None:
    """None when the extension is built and loaded, else why not (builds it on first call)."""
    return _build()[1]


def _stream_of(device: torch.device) -> int:
    """The raw ``cudaStream_t`` of the current stream on ``device``, as an integer."""
    return torch.cuda.current_stream(device).cuda_stream


def cuda_teacher_probs(teacher_output: torch.Tensor, center: torch.Tensor,
                       teacher_temp: float) -> torch.Tensor:
    """softmax((t - center) / teacher_temp) by the teacher kernel, without gradient.

    ``teacher_output [2*B, K]`` (CUDA), ``center [1, K]`` -> ``[2*B, K]`` in the accumulation
    dtype (float64 for float64 logits, else float32).
    """
    acc = torch.float64 if teacher_output.dtype == torch.float64 else torch.float32
    ext = load_extension()
    teacher = teacher_output.detach().contiguous()
    with torch.cuda.device(teacher.device):
        return ext.teacher_probs(teacher, center.detach().to(acc).contiguous(),
                                 1.0 / teacher_temp, _stream_of(teacher.device))


class CudaDINOLossFunction(torch.autograd.Function):
    """``(student [V*B, K], q [2*B, K], ncrops, student_temp, overwrite_logits) -> loss``.

    Out of place (default): one kernel launch in the forward writes the loss rows and the
    gradient for a unit upstream gradient; the backward only scales that saved gradient by
    the upstream gradient, in place. In place: the forward launches the kernel for the loss
    rows only (its second pass skipped) and saves the logits; the backward launches it again
    with the logits as its gradient buffer and the upstream gradient read on the device,
    then bumps the logits' autograd version, as a torch in-place op would, so that any
    other node that saved them fails loudly instead of reading the gradient (see
    ``fused.py`` for when overwriting the logits is safe).
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, ncrops: int,
                student_temp: float, overwrite_logits: bool = False) -> torch.Tensor:
        batch = q.shape[0] // 2
        n_pairs = 2 * ncrops - 2
        ext = load_extension()
        ctx.ncrops, ctx.student_temp, ctx.overwrite_logits = ncrops, student_temp, overwrite_logits
        ctx.grad_scale = 1.0 / (student_temp * n_pairs * batch)
        with torch.cuda.device(student.device):
            if overwrite_logits:
                row_loss = ext.student_loss(student, q, ncrops, 1.0 / student_temp,
                                            _stream_of(student.device))
                ctx.save_for_backward(student, q)
            else:
                row_loss, grad = ext.student_forward(student, q, ncrops, 1.0 / student_temp,
                                                     ctx.grad_scale, _stream_of(student.device))
                ctx.save_for_backward(grad)
        ctx.used = False
        return row_loss.sum() / (n_pairs * batch)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.overwrite_logits:
            return CudaDINOLossFunction._backward_inplace(ctx, grad_loss)
        if ctx.used:
            raise RuntimeError("the CUDA DINO loss supports one backward per forward "
                               "(its gradient buffer is scaled in place)")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss)
        return grad, None, None, None, None

    @staticmethod
    def _backward_inplace(ctx, grad_loss: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("the CUDA DINO loss with overwrite_logits=True has no double "
                               "backward (create_graph=True): use overwrite_logits=False")
        # Unpacking checks the logits' version: a second backward after this one fails.
        student, q = ctx.saved_tensors
        upstream = grad_loss.detach().to(q.dtype).reshape(1).contiguous()  # stays on the device
        with torch.cuda.device(student.device):
            load_extension().student_grad_inplace(student, q, ctx.ncrops, 1.0 / ctx.student_temp,
                                                  ctx.grad_scale, upstream,
                                                  _stream_of(student.device))
        torch.autograd.graph.increment_version(student)  # the kernel wrote through a pointer
        return student, None, None, None, None


def cuda_dino_loss(student_output: torch.Tensor, teacher_probs_: torch.Tensor, ncrops: int,
                   student_temp: float, overwrite_logits: bool = False) -> torch.Tensor:
    """Loss from CUDA student logits ``[ncrops*B, K]`` and teacher probabilities
    ``[2*B, K]`` (accumulation dtype, e.g. from :func:`cuda_teacher_probs`).

    ``overwrite_logits=True``: the backward overwrites ``student_output`` (or its contiguous
    copy) with the gradient (the forward only reads it), within the contract of
    :func:`dino_core.loss.fused.fused_dino_loss`."""
    if student_output.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the CUDA DINO loss supports {SUPPORTED_DTYPES}, "
                        f"got {student_output.dtype}")
    return CudaDINOLossFunction.apply(student_output.contiguous(),
                                      teacher_probs_.detach().contiguous(), ncrops, student_temp,
                                      overwrite_logits)
