"""Fused DINO loss in plain torch ops: one softmax per student view, closed-form gradient.

With teacher probabilities ``q_t`` (t = 0, 1: the global views), student view ``v`` meets
``Q_v = sum_{t != v} q_t`` (one teacher row for a global view, both for a local one) of mass
``n_v = sum_k Q_v[k]``, and with ``P = 2V - 2`` pairs and ``x_v = s_v / tau``:

    L       = 1/(P B) sum_b sum_v [ n_v * logsumexp(x_v) - <Q_v, x_v> ]
            = -1/(P B) sum_b sum_v <Q_v, log_softmax(x_v)>
    dL/ds_v = (n_v * softmax(x_v) - Q_v) / (tau P B)          (every row sums to zero)

which is the pair loop of ``reference.py`` regrouped by student view: one log-softmax per
view instead of one per pair, and no ``[B, K]`` tensor per pair. The forward saves only its
inputs (the student logits, which autograd holds anyway, and the teacher probabilities
``[2, B, K]``); the backward recomputes the softmax.

Memory (``[B, K]`` is one view's block; float32 for bf16/fp16/fp32 inputs, float64 for
float64). The forward works two views at a time, so its temporaries never exceed the
teacher probabilities' size (``2 [B, K]``). The backward needs one ``[V*B, K]`` buffer, which
is the gradient itself when the dtypes match, plus one ``[B, K]`` sum.

``inplace_backward=True`` writes the gradient over the student logits instead of into a new
tensor (apex's xentropy offers the same trade): the backward then allocates no ``[V*B, K]``
buffer at all for float32/float64 logits (for bf16/fp16 it still needs the float32 softmax,
but not a second gradient tensor). It is safe when nothing reads the logits after the
backward, as in training: the head's last linear layer needs its input and weight for its
own backward, not its output. The logits are saved with ``save_for_backward`` and modified
in place, so any other autograd node that saved them and runs later fails with torch's
"modified by an inplace operation" error instead of reading a gradient, and a second
backward through the same graph fails the same way. Code outside autograd that reads the
logits after the backward (logging, statistics) sees the gradient: read them before.

The softmaxes run in place (``out=`` their own input) to save a buffer. torch's softmax
kernels finish reading a value before writing it; the tests check the result against the
pair loop on the CPU, and on CUDA in the gpu-marked tests.
"""
from __future__ import annotations

import torch

from .reference import accumulation_dtype


def teacher_probs(teacher_output: torch.Tensor, center: torch.Tensor,
                  teacher_temp: float) -> torch.Tensor:
    """``softmax((t - center) / teacher_temp)`` in the accumulation dtype, without gradient.

    ``teacher_output [2*B, K]``, ``center [1, K]`` -> ``[2, B, K]`` (view-major). One
    ``[2*B, K]`` buffer: the softmax runs in place.
    """
    acc = accumulation_dtype(teacher_output.dtype)
    with torch.no_grad():
        centered = teacher_output.detach().to(acc) - center.to(acc)
        centered.div_(teacher_temp)
        probs = torch.softmax(centered, dim=-1, out=centered)  # each row read, then written
    return probs.view(2, teacher_output.shape[0] // 2, -1)


def _pair_mask(ncrops: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[2, V]``: 1 where teacher view t meets student view v (t != v), else 0."""
    mask = torch.ones(2, ncrops, dtype=dtype, device=device)
    mask[0, 0] = 0
    mask[1, 1] = 0
    return mask


def _scaled(student: torch.Tensor, inv_tau: float, acc: torch.dtype) -> torch.Tensor:
    """``student * inv_tau`` as a new tensor in the accumulation dtype, same shape."""
    if student.dtype == acc:
        return torch.mul(student, inv_tau)
    return student.to(acc).mul_(inv_tau)


# Student views per forward chunk: two, so that the forward's temporary (two [B, K] blocks)
# is no larger than the teacher probabilities it already holds.
FORWARD_CHUNK_VIEWS = 2


class FusedDINOLossFunction(torch.autograd.Function):
    """Autograd function: ``(student [V*B, K], q [2, B, K], ncrops, student_temp,
    inplace_backward) -> loss``.

    Forward: per chunk of two views, ``x = s / tau`` in one buffer, its log-softmax in place
    and one batched product with the teacher rows. Backward: ``x`` again (in the gradient
    buffer when the dtypes match; in the logits themselves with ``inplace_backward``), its
    softmax in place, one multiply-add per group of views (local, global 0, global 1).
    Large ops (two-view chunks, view groups) rather than several small ones per view, so a
    busy machine's thread scheduling costs little; softmax kernels rather than ``exp``,
    which torch computes an order of magnitude slower on the CPU for very negative
    arguments.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, ncrops: int,
                student_temp: float, inplace_backward: bool = False) -> torch.Tensor:
        acc = q.dtype
        batch, out_dim = q.shape[1], q.shape[2]
        q_by_sample = q.transpose(0, 1)                                          # [B, 2, K]
        parts = []
        for v0 in range(0, ncrops, FORWARD_CHUNK_VIEWS):
            v1 = min(v0 + FORWARD_CHUNK_VIEWS, ncrops)
            log_p = _scaled(student[v0 * batch:v1 * batch], 1.0 / student_temp, acc)
            torch.log_softmax(log_p, dim=-1, out=log_p)  # in place: each row read, then written
            by_sample = log_p.view(v1 - v0, batch, out_dim).permute(1, 2, 0)     # [B, K, c]
            parts.append(torch.bmm(q_by_sample, by_sample))     # [B, 2, c]: <q_t, log p_v>
            del log_p, by_sample
        dots = torch.cat(parts, dim=2)                                           # [B, 2, V]
        total = -(dots * _pair_mask(ncrops, q.device, acc)).sum()
        n_pairs = 2 * ncrops - 2
        ctx.save_for_backward(student, q)
        ctx.ncrops, ctx.student_temp, ctx.n_pairs = ncrops, student_temp, n_pairs
        ctx.inplace_backward = inplace_backward
        return total / (n_pairs * batch)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.inplace_backward and torch.is_grad_enabled():
            raise RuntimeError("the fused DINO loss with inplace_backward=True has no double "
                               "backward (create_graph=True): use inplace_backward=False")
        # Unpacking checks the logits' version: a second backward after an in-place one fails.
        student, q = ctx.saved_tensors
        ncrops, tau = ctx.ncrops, ctx.student_temp
        batch, out_dim = q.shape[1], q.shape[2]
        acc = q.dtype
        scale = grad_loss.to(acc) / (tau * ctx.n_pairs * batch)       # 0-dim, on the device
        # n_v = sum over the teacher rows student view v meets of their mass: analytically
        # 1 or 2, kept exact so that the gradient rows sum to zero and the closed form
        # equals the pair loop's gradient to rounding.
        q_mass = q.sum(dim=-1)                                        # [2, B]
        n_scale = (_pair_mask(ncrops, q.device, acc).t() @ q_mass).unsqueeze(-1) * scale
        if ctx.inplace_backward and student.dtype == acc:
            p = student.mul_(1.0 / tau)     # x = s / tau over the logits (same op as _scaled)
        else:
            p = _scaled(student, 1.0 / tau, acc)                      # [V*B, K]: x = s / tau
        torch.softmax(p, dim=-1, out=p)              # in place: each row is read, then written
        p = p.view(ncrops, batch, out_dim)
        if student.dtype == acc:
            grad = p                                 # the logits themselves when in place
        elif ctx.inplace_backward:
            grad = student.view_as(p)                # bf16/fp16 gradient over the logits
        else:
            grad = torch.empty_like(student).view_as(p)
        if ncrops > 2:  # local views meet both teacher rows: Q = q_0 + q_1
            neg_q = torch.add(q[0], q[1]).mul_(-scale)                # [B, K]
            torch.addcmul(neg_q, p[2:], n_scale[2:], out=grad[2:])     # scale * (n p - Q)
            del neg_q
        torch.mul(p[:2], n_scale[:2], out=grad[:2])
        grad[0].addcmul_(q[1], -scale)       # global view 0 meets teacher view 1, and
        grad[1].addcmul_(q[0], -scale)       # global view 1 meets teacher view 0
        return grad.view_as(student), None, None, None, None


def fused_dino_loss(student_output: torch.Tensor, teacher_probs_: torch.Tensor, ncrops: int,
                    student_temp: float, inplace_backward: bool = False) -> torch.Tensor:
    """Fused loss from student logits ``[ncrops*B, K]`` and teacher probabilities
    ``[2, B, K]`` (from :func:`teacher_probs`). Returns a 0-dim tensor in the accumulation
    dtype; the gradient flows to ``student_output`` only.

    ``inplace_backward=True``: the backward overwrites ``student_output`` with the gradient
    (in its dtype) and returns that tensor as the gradient; see the module docstring for
    when that is safe. A non-contiguous ``student_output`` is copied first, and the copy is
    what gets overwritten.
    """
    return FusedDINOLossFunction.apply(student_output.contiguous(), teacher_probs_.detach(),
                                       ncrops, student_temp, inplace_backward)
