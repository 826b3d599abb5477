"""Fused DINO loss in plain torch ops: one softmax per student view, closed-form gradient.

With teacher probabilities ``q_t`` (t = 0, 1: the global views), student view ``v`` meets
``Q_v = sum_{t != v} q_t`` (one teacher row for a global view, both for a local one) of mass
``n_v = sum_k Q_v[k]``, and with ``P = 2V - 2`` pairs and ``x_v = s_v / tau``:

    L       = 1/(P B) sum_b sum_v [ n_v * logsumexp(x_v) - <Q_v, x_v> ]
            = -1/(P B) sum_b sum_v <Q_v, log_softmax(x_v)>
    dL/ds_v = (n_v * softmax(x_v) - Q_v) / (tau P B)          (every row sums to zero)

which is the pair loop of ``reference.py`` regrouped by student view: one log-softmax per
view instead of one per pair, and no ``[B, K]`` tensor per pair.

Two autograd functions compute it:

- Out of place (default): the logits are left alone. The forward works two views at a time
  in one reused ``[2B, K]`` buffer (log-softmax, then a batched product with the teacher
  rows) and saves only its inputs; the backward recomputes the softmax in the gradient
  buffer (when the dtypes match) and writes the closed form there. Memory: the gradient
  plus ``2 [B, K]`` in the forward and one ``[B, K]`` sum in the backward (float32 for
  bf16/fp16/fp32 inputs, float64 for float64).
- ``overwrite_logits=True``: the student logits are the loss's working buffer from the call
  on. The forward writes ``x = s / tau`` and then its softmax over them, and takes the loss
  from that one softmax (see :class:`FusedOverwriteDINOLossFunction`); the backward writes
  the gradient over the softmax and returns the logits tensor as the gradient. So the
  softmax runs once instead of twice, and nothing of the logits' size is allocated for
  float32/float64 logits (bf16/fp16 logits need a float32 working copy, whose result is
  copied into them). apex's xentropy offers the same trade.

Overwriting is safe when nothing reads the logits after the loss call, as in training: the
head's last linear layer needs its input and weight for its own backward, not its output.
The forward's writes and the backward's bump the logits' autograd version, so any other
node that saved them fails with torch's "modified by an inplace operation" error instead of
reading a softmax or a gradient, and a second backward fails the same way. Code outside
autograd that reads the logits after the call (logging, statistics) sees the softmax or
the gradient: read them before.

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


def _scale_into(out: torch.Tensor, student: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """``out = student * inv_tau`` in ``out``'s dtype (a low-precision ``student`` is
    widened before the multiply, not after)."""
    if student.dtype == out.dtype:
        return torch.mul(student, inv_tau, out=out)
    return out.copy_(student).mul_(inv_tau)


def _scaled(student: torch.Tensor, inv_tau: float, acc: torch.dtype) -> torch.Tensor:
    """``student * inv_tau`` as a new tensor in the accumulation dtype, same shape."""
    return _scale_into(torch.empty_like(student, dtype=acc), student, inv_tau)


# Student views per forward chunk: two, so that the forward's temporary (two [B, K] blocks)
# is no larger than the teacher probabilities it already holds.
FORWARD_CHUNK_VIEWS = 2


def _closed_form_gradient(p: torch.Tensor, q: torch.Tensor, n_scale: torch.Tensor,
                          scale: torch.Tensor) -> torch.Tensor:
    """``p[v] <- n_scale[v] * p[v] - scale * Q_v`` over the softmax ``p [V, B, K]``, in place
    (each element is read, then written); returns ``p``. One multiply-add per group of
    views: the local views (``Q = q_0 + q_1``), global 0 (``Q = q_1``), global 1 (``q_0``)."""
    if p.shape[0] > 2:
        neg_q = torch.add(q[0], q[1]).mul_(-scale)                    # [B, K]
        torch.addcmul(neg_q, p[2:], n_scale[2:], out=p[2:])
        del neg_q
    p[:2].mul_(n_scale[:2])
    p[0].addcmul_(q[1], -scale)
    p[1].addcmul_(q[0], -scale)
    return p


def _view_mass(q: torch.Tensor, ncrops: int) -> torch.Tensor:
    """``n [V, B]``: the teacher mass student view v meets, analytically 1 or 2, kept exact
    so that the gradient rows sum to zero and the closed form equals the pair loop's
    gradient to rounding."""
    return _pair_mask(ncrops, q.device, q.dtype).t() @ q.sum(dim=-1)


def _refuse_double_backward() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("the fused DINO loss with overwrite_logits=True has no double "
                           "backward (create_graph=True): use overwrite_logits=False")


class FusedDINOLossFunction(torch.autograd.Function):
    """Out of place: ``(student [V*B, K], q [2, B, K], ncrops, student_temp) -> loss``; the
    logits are left alone and the graph may be walked more than once.

    Forward: per chunk of two views, ``x = s / tau`` in one reused buffer, its log-softmax
    in place and one batched product with the teacher rows. Backward: ``x`` again (in the
    gradient buffer when the dtypes match), its softmax in place, the closed form.
    Large ops (two-view chunks, view groups) rather than several small ones per view, so a
    busy machine's thread scheduling costs little; softmax kernels rather than ``exp``,
    which torch computes an order of magnitude slower on the CPU for very negative
    arguments.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, ncrops: int,
                student_temp: float) -> torch.Tensor:
        acc = q.dtype
        batch, out_dim = q.shape[1], q.shape[2]
        q_by_sample = q.transpose(0, 1)                                          # [B, 2, K]
        chunk = q.new_empty(min(FORWARD_CHUNK_VIEWS, ncrops) * batch, out_dim)  # reused
        parts = []
        for v0 in range(0, ncrops, FORWARD_CHUNK_VIEWS):
            v1 = min(v0 + FORWARD_CHUNK_VIEWS, ncrops)
            log_p = chunk[:(v1 - v0) * batch]
            _scale_into(log_p, student[v0 * batch:v1 * batch], 1.0 / student_temp)
            torch.log_softmax(log_p, dim=-1, out=log_p)  # in place: each row read, then written
            by_sample = log_p.view(v1 - v0, batch, out_dim).permute(1, 2, 0)     # [B, K, c]
            parts.append(torch.bmm(q_by_sample, by_sample))     # [B, 2, c]: <q_t, log p_v>
        del chunk, log_p, by_sample
        dots = torch.cat(parts, dim=2)                                           # [B, 2, V]
        total = -(dots * _pair_mask(ncrops, q.device, acc)).sum()
        n_pairs = 2 * ncrops - 2
        ctx.save_for_backward(student, q)
        ctx.ncrops, ctx.student_temp, ctx.n_pairs = ncrops, student_temp, n_pairs
        return total / (n_pairs * batch)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        student, q = ctx.saved_tensors
        ncrops, tau = ctx.ncrops, ctx.student_temp
        batch, out_dim = q.shape[1], q.shape[2]
        acc = q.dtype
        scale = grad_loss.to(acc) / (tau * ctx.n_pairs * batch)       # 0-dim, on the device
        n_scale = (_view_mass(q, ncrops) * scale).unsqueeze(-1)       # [V, B, 1]
        p = _scaled(student, 1.0 / tau, acc)                          # [V*B, K]: x = s / tau
        torch.softmax(p, dim=-1, out=p)              # in place: each row is read, then written
        grad = _closed_form_gradient(p.view(ncrops, batch, out_dim), q, n_scale, scale)
        # bf16/fp16: rounded once, from the float32 gradient.
        return grad.view_as(student).to(student.dtype), None, None, None


class FusedOverwriteDINOLossFunction(torch.autograd.Function):
    """``overwrite_logits=True``: ``(student [V*B, K], q [2, B, K], ncrops, student_temp) ->
    loss`` with the student logits as the loss's only ``[V*B, K]`` buffer, and one softmax
    per row for both the loss and the gradient.

    Forward, over the logits (a float32 copy of bf16/fp16 logits): ``x = s / tau``; one
    batched product ``<q_t, x_v>``; the row maxima; the softmax in place. The softmax's
    largest entry of a row is ``exp(0) / sum_k exp(x_k - max x)``, so the row's
    log-sum-exp is ``max x - log(max p)``, and the loss is
    ``1/(P B) sum_b sum_v [n_v lse_v - <Q_v, x_v>]``. Backward: the closed form in place
    over the softmax (and copied into bf16/fp16 logits). The softmax thus runs once, where
    the out-of-place function needs a log-softmax in the forward and a softmax again in the
    backward; nothing of the logits' size is allocated for float32/float64 logits.

    The gradient is the out-of-place function's, bit for bit (the same ops on the same
    softmax). The loss value is a difference of two sums of size ``~ n max|x|``, so in
    float32 its error is bounded by ``~ eps max|x|`` rather than ``eps * loss`` (tested:
    at most ``4 eps max|x|``, also near the loss's floor). DINO's head makes cosine logits
    (with ``norm_last_layer``, the default), so ``|x| <= 1/tau = 10`` and that error is
    below 5e-6 absolute, on a value that is logged, never differentiated.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, q: torch.Tensor, ncrops: int,
                student_temp: float) -> torch.Tensor:
        acc = q.dtype
        batch, out_dim = q.shape[1], q.shape[2]
        inv_tau = 1.0 / student_temp
        # The logits become x = s / tau (a working copy for bf16/fp16 logits).
        x = student.mul_(inv_tau) if student.dtype == acc else _scaled(student, inv_tau, acc)
        by_sample = x.view(ncrops, batch, out_dim).permute(1, 2, 0)             # [B, K, V]
        dots = torch.bmm(q.transpose(0, 1), by_sample)                # [B, 2, V]: <q_t, x_v>
        x_max = x.amax(dim=-1)                                                   # [V*B]
        p = torch.softmax(x, dim=-1, out=x)          # in place: each row is read, then written
        lse = x_max - torch.log(p.amax(dim=-1))
        mask = _pair_mask(ncrops, q.device, acc)
        n = _view_mass(q, ncrops)                                                # [V, B]
        total = (n * lse.view(ncrops, batch)).sum() - (dots * mask).sum()
        n_pairs = 2 * ncrops - 2
        # Saved after the writes above, so the version check at unpacking passes once and a
        # second backward (after the in-place one) fails.
        ctx.save_for_backward(student, q)
        ctx.softmax = None if student.dtype == acc else p
        ctx.n, ctx.student_temp, ctx.n_pairs = n, student_temp, n_pairs
        return total / (n_pairs * batch)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        _refuse_double_backward()
        student, q = ctx.saved_tensors   # checks the logits' version: one backward only
        p, ctx.softmax = (student if ctx.softmax is None else ctx.softmax), None
        ncrops, batch, out_dim = ctx.n.shape[0], q.shape[1], q.shape[2]
        scale = grad_loss.to(q.dtype) / (ctx.student_temp * ctx.n_pairs * batch)
        grad = _closed_form_gradient(p.view(ncrops, batch, out_dim), q,
                                     (ctx.n * scale).unsqueeze(-1), scale)
        if grad.data_ptr() != student.data_ptr():
            student.copy_(grad.view_as(student))  # bf16/fp16: rounded once, into the logits
        return student, None, None, None


def fused_dino_loss(student_output: torch.Tensor, teacher_probs_: torch.Tensor, ncrops: int,
                    student_temp: float, overwrite_logits: bool = False) -> torch.Tensor:
    """Fused loss from student logits ``[ncrops*B, K]`` and teacher probabilities
    ``[2, B, K]`` (from :func:`teacher_probs`). Returns a 0-dim tensor in the accumulation
    dtype; the gradient flows to ``student_output`` only.

    ``overwrite_logits=True``: ``student_output`` is the loss's working buffer from this
    call on (it holds the student softmax after the forward, the gradient after the
    backward, which returns that tensor as the gradient); see the module docstring for when
    that is safe. A non-contiguous ``student_output`` is copied first, and the copy is what
    gets overwritten.
    """
    fn = FusedOverwriteDINOLossFunction if overwrite_logits else FusedDINOLossFunction
    return fn.apply(student_output.contiguous(), teacher_probs_.detach(), ncrops, student_temp)
