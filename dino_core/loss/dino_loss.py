"""``DINOLoss``: the module the trainer calls, with a choice of implementation.

    loss = DINOLoss(out_dim, ncrops)(student [ncrops*B, K], teacher [2*B, K], teacher_temp)

The teacher temperature tau_t is the caller's: the training schedules own it
(``dino_core.train.schedules.teacher_temp_schedule``, one value per epoch).

The loss is the mean over pairs (teacher global view t, student view v != t) of the batch
mean of ``-sum_k q_t[k] log p_v[k]`` with ``q_t = softmax((t - center) / tau_t)`` (no
gradient) and ``p_v = softmax(s_v / student_temp)``; then the center EMA is updated from the
raw teacher logits (see ``center.py``). Rows are view-major: rows ``v*B:(v+1)*B`` are view v.

Implementations (``impl``), all with the same value and gradient:
- ``reference``: the paper's pair loop (``reference.py``), for tests and baselines.
- ``fused``: one softmax per student view, closed-form backward, plain torch (``fused.py``).
- ``cuda``: the CUDA kernels (``cuda.py``), from the kernel library built ahead of time
  (``dino-build-kernels``; see ``pipelines/kernels``).
- ``auto``: ``cuda`` for CUDA tensors when the kernel library loads for this GPU, else
  ``fused``.
One log line per module says which implementation runs and why (the library's path, or why
it cannot be used and what to do).

``overwrite_logits=True`` lets ``fused`` and ``cuda`` use the student logits as their
working buffer from the call on, instead of a new ``[ncrops*B, K]`` tensor: ``fused`` writes
its one softmax over them in the forward and the gradient in the backward; ``cuda`` writes
the gradient over them in the forward (bf16/fp32/fp64) or the backward (fp16) (``fused.py``
and ``cuda.py`` say when that is safe; the trainer is such a caller). After the
backward, ``student_output`` holds the gradient. It is a permission, not a demand:
``reference`` is plain autograd and leaves the logits alone (one log line says so). The
gradient's values are the same either way.
"""
from __future__ import annotations

import logging

import torch

from pipelines.kernels.library import library_path

from . import cuda as cuda_ext
from .center import CenterEMA, PendingCenterHooks
from .fused import fused_dino_loss, teacher_probs
from .reference import reference_dino_loss

log = logging.getLogger(__name__)

IMPLS = ("reference", "fused", "cuda", "auto")


class DINOLoss(PendingCenterHooks):
    """DINO cross-entropy between teacher and student views, with the teacher center.

    Buffers: ``center [1, out_dim]`` (float32; saved in the state dict as ``center``).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, ncrops: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, impl: str = "auto",
                 overwrite_logits: bool = False):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if ncrops < 2:
            raise ValueError(f"ncrops must be >= 2 (the two global views), got {ncrops}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if not isinstance(overwrite_logits, bool):
            raise ValueError(f"overwrite_logits must be a bool, got {overwrite_logits!r}")
        self.out_dim, self.ncrops = out_dim, ncrops
        self.student_temp, self.impl = student_temp, impl
        # Off by default: a module that overwrites its input must be asked to. The trainer
        # turns it on (config loss.overwrite_logits) because its step never reads the logits
        # after the loss call.
        self.overwrite_logits = overwrite_logits
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._center_ema = CenterEMA(center_momentum)
        self._announced: set[str] = set()

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, ncrops={self.ncrops}, "
                f"student_temp={self.student_temp}, impl={self.impl!r}, "
                f"overwrite_logits={self.overwrite_logits}")

    def resolve_impl(self, student_output: torch.Tensor,
                     teacher_output: torch.Tensor | None = None) -> str:
        """The implementation that runs for these inputs (``auto`` resolved); logged once."""
        on_cuda = student_output.is_cuda
        if self.impl == "cuda" and not on_cuda:
            raise ValueError(f"impl='cuda' needs CUDA tensors, got {student_output.device}")
        if self.impl == "cuda":
            reason = cuda_ext.unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"impl='cuda': the CUDA kernels are unavailable: {reason}")
            return self._announce("cuda", f"impl='cuda', kernels from {library_path()}")
        if self.impl != "auto":
            return self._announce(self.impl, f"impl={self.impl!r}")
        if not on_cuda:
            return self._announce("fused", f"auto: tensors on {student_output.device}")
        if student_output.dtype not in cuda_ext.SUPPORTED_DTYPES:
            return self._announce("fused", f"auto: {student_output.dtype} is not a kernel dtype")
        if teacher_output is not None and teacher_output.dtype != student_output.dtype:
            return self._announce("fused", f"auto: teacher logits are {teacher_output.dtype}, "
                                           f"student logits {student_output.dtype}")
        reason = cuda_ext.unavailable_reason()
        if reason is not None:
            return self._announce("fused", f"auto: CUDA kernels unavailable: {reason}")
        return self._announce("cuda", f"auto: CUDA tensors, kernels from {library_path()}")

    def _announce(self, impl: str, why: str) -> str:
        """Log once per module and implementation which one runs and why."""
        if impl not in self._announced:
            self._announced.add(impl)
            log.info("DINO loss: using the %s implementation (%s)", impl, why)
        return impl

    def _note_once(self, message: str) -> None:
        """Log ``message`` once per module."""
        if message not in self._announced:
            self._announced.add(message)
            log.info("DINO loss: %s", message)

    def _check_inputs(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        """Shapes and devices only: no host sync."""
        if student_output.dim() != 2 or teacher_output.dim() != 2:
            raise ValueError(f"expected 2-d logits, got student {tuple(student_output.shape)} "
                             f"and teacher {tuple(teacher_output.shape)}")
        rows_t, k_t = teacher_output.shape
        rows_s, k_s = student_output.shape
        if k_s != self.out_dim or k_t != self.out_dim:
            raise ValueError(f"logit width must be out_dim={self.out_dim}, got student {k_s} "
                             f"and teacher {k_t}")
        if rows_t == 0 or rows_t % 2:
            raise ValueError(f"teacher_output must have 2*B rows (B >= 1), got {rows_t}")
        if rows_s != self.ncrops * (rows_t // 2):
            raise ValueError(f"student_output must have ncrops*B = {self.ncrops}*{rows_t // 2} "
                             f"rows, got {rows_s}")
        if student_output.device != teacher_output.device:
            raise ValueError(f"student on {student_output.device}, teacher on "
                             f"{teacher_output.device}")
        if self.center.device != teacher_output.device:
            raise ValueError(f"the loss's center is on {self.center.device} but the logits on "
                             f"{teacher_output.device}: move the loss with .to(device)")

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                teacher_temp: float, update_center: bool = True) -> torch.Tensor:
        """Scalar loss (float32, float64 for float64 inputs); updates the center after it
        unless ``update_center`` is False (a step of several micro-batches updates it once,
        from all of them: ``update_center_from``).

        ``student_output [ncrops*B, K]``, ``teacher_output [2*B, K]``, view-major rows;
        ``teacher_temp`` tau_t (> 0), a host float: this step's value of the schedule.
        """
        self._check_inputs(student_output, teacher_output)
        if not teacher_temp > 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        self._center_ema.apply(self.center)  # a pending all-reduce lands before its use
        temp = float(teacher_temp)
        impl = self.resolve_impl(student_output, teacher_output)
        # Autocast off: the kernels accumulate in float32 by themselves, and autocast would
        # run the fused path's matmuls in bf16.
        with torch.autocast(student_output.device.type, enabled=False):
            if impl == "reference":
                if self.overwrite_logits:
                    self._note_once("overwrite_logits has no effect on impl='reference' "
                                    "(plain autograd): its gradient stays out of place")
                loss = reference_dino_loss(student_output, teacher_output, self.center, temp,
                                           self.ncrops, self.student_temp)
            elif impl == "fused":
                q = teacher_probs(teacher_output, self.center, temp)
                loss = fused_dino_loss(student_output, q, self.ncrops, self.student_temp,
                                       self.overwrite_logits)
            else:
                loss = cuda_ext.cuda_dino_loss(student_output, teacher_output, self.center, temp,
                                               self.ncrops, self.student_temp,
                                               self.overwrite_logits)
        if update_center:
            self._center_ema.launch(teacher_output, self.center)
        return loss

    def update_center_from(self, teacher_outputs: list[torch.Tensor]) -> None:
        """Start the center's EMA update from the teacher logits of a whole step (``[2*B_i,
        K]`` each, e.g. one per micro-batch): the mean over all their rows (and ranks), as
        one batch of their union would; its all-reduce overlaps what follows."""
        rows = teacher_outputs[0] if len(teacher_outputs) == 1 else torch.cat(teacher_outputs)
        self._center_ema.launch(rows, self.center)

    def sync_center(self) -> None:
        """Fold a pending (distributed) center update into ``center`` now."""
        self._center_ema.apply(self.center)
