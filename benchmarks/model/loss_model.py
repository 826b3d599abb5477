"""Bytes each DINO loss implementation moves per call, from a stated model, and the floor.

A call is what ``benchmarks/model/loss.py`` times: teacher softmax + loss forward + backward to the
student logits (the center update is left out). Shapes: ``S = V*B*K`` student logits,
``T = 2*B*K`` teacher logits; ``e`` bytes per logit, ``a`` bytes per accumulation value
(4; 8 for float64 logits).

The floor: read the student logits once, read the teacher logits once, write the gradient
once: ``(2 S + T) e`` (0.218 GB at B=64, V=12, K=65536, bf16).

The model, op by op:
- torch implementations: every op reads each input and writes each output once from memory
  (a broadcast operand counts once; a softmax or log-softmax counts one read and one write
  of its row, though for K=65536 its kernel reads a row more than once; outputs under a few
  KiB are ignored). This is a lower bound of what those ops move.
- CUDA kernels: what the kernel design reads from and writes to memory: each student and
  teacher value once, the center once, the gradient once; re-reads the design serves from
  shared memory or L2 (the teacher and center in later phases, streaming layouts' student
  re-reads) are not counted. The backward's rescale reads one number per block when the
  upstream gradient is 1, as in these calls (another upstream adds a read and a write of the
  gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

OVERWRITE = "(overwrite logits)"


@dataclass(frozen=True)
class Op:
    what: str
    read: float
    write: float


@dataclass(frozen=True)
class Shapes:
    """Element counts and sizes of one call."""

    batch: int
    views: int
    out_dim: int
    dtype: torch.dtype

    @property
    def e(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def a(self) -> int:
        return 8 if self.dtype == torch.float64 else 4

    @property
    def s(self) -> int:
        return self.views * self.batch * self.out_dim

    @property
    def t(self) -> int:
        return 2 * self.batch * self.out_dim

    @property
    def row(self) -> int:
        return self.batch * self.out_dim  # one view's [B, K]


def floor_bytes(sh: Shapes) -> int:
    """Student logits in, teacher logits in, gradient out."""
    return (2 * sh.s + sh.t) * sh.e


def _widen(n: int, sh: Shapes, what: str) -> list[Op]:
    """``x.to(acc)``: a copy when the logits are narrower than the accumulation type."""
    return [Op(what, n * sh.e, n * sh.a)] if sh.e != sh.a else []


def _teacher_probs(sh: Shapes) -> list[Op]:
    """softmax((t - c) / tau_t) in the accumulation type (reference and fused alike)."""
    t, a = sh.t, sh.a
    return [*_widen(t, sh, "teacher.to(acc)"), Op("teacher - center", t * a, t * a),
            Op("/ teacher_temp", t * a, t * a), Op("softmax", t * a, t * a)]


def _reference(sh: Shapes) -> list[Op]:
    s, a, row, pairs = sh.s, sh.a, sh.row, 2 * sh.views - 2
    fwd = [*_widen(s, sh, "student.to(acc)"), Op("/ student_temp", s * a, s * a),
           *_teacher_probs(sh)]
    per_pair = [Op("log_softmax", row * a, row * a), Op("-q", row * a, row * a),
                Op("-q * log p", 2 * row * a, row * a), Op("sum", row * a, 0)]
    per_pair_bwd = [Op("mul backward", row * a, row * a),
                    Op("log_softmax backward", 2 * row * a, row * a)]
    locals_ = max(sh.views - 2, 0)  # local views get two pair gradients: one add each
    bwd = [Op("accumulate local views", 2 * row * a * locals_, row * a * locals_),
           Op("chunk backward (cat)", s * a, s * a), Op("/ student_temp backward", s * a, s * a)]
    if sh.e != sh.a:
        bwd.append(Op("to(acc) backward", s * a, s * sh.e))
    return fwd + pairs * (per_pair + per_pair_bwd) + bwd


def _einsum(sh: Shapes) -> list[Op]:
    s, t, a = sh.s, sh.t, sh.a
    ops = [*_widen(s, sh, "student.to(acc)"), Op("/ student_temp", s * a, s * a),
           Op("log_softmax", s * a, s * a), *_teacher_probs(sh), Op("stack q", t * a, t * a),
           Op("einsum", (t + s) * a, 0), Op("einsum backward", t * a, s * a),
           Op("log_softmax backward", 2 * s * a, s * a),
           Op("/ student_temp backward", s * a, s * a)]
    if sh.e != sh.a:
        ops.append(Op("to(acc) backward", s * a, s * sh.e))
    return ops


def _scale(n: int, sh: Shapes, what: str) -> list[Op]:
    """``x = s / tau`` into an accumulation-type buffer (copy then multiply when widening)."""
    if sh.e != sh.a:
        return [Op(f"{what}: copy", n * sh.e, n * sh.a), Op(f"{what}: * 1/tau", n * sh.a,
                                                            n * sh.a)]
    return [Op(f"{what}: * 1/tau", n * sh.e, n * sh.a)]


def _closed_form(sh: Shapes) -> list[Op]:
    """``n_v p - Q_v`` over the softmax, in place (fused.py's _closed_form_gradient)."""
    a, row, locals_ = sh.a, sh.row, max(sh.views - 2, 0)
    ops = [Op("n_v p - Q_v, globals", 6 * row * a, 4 * row * a)]
    if locals_:
        ops = [Op("-(q0 + q1) * scale", 3 * row * a, 2 * row * a),
               Op("n_v p - Q_v, locals", (locals_ + 1) * row * a, locals_ * row * a), *ops]
    return ops


def _fused(sh: Shapes, overwrite: bool) -> list[Op]:
    s, t, a = sh.s, sh.t, sh.a
    narrow_out = [Op("gradient to the logits' dtype", s * a, s * sh.e)] if sh.e != sh.a else []
    if overwrite:
        fwd = [*_teacher_probs(sh), *_scale(s, sh, "x"), Op("bmm <q, x>", (t + s) * a, 0),
               Op("amax x", s * a, 0), Op("softmax in place", s * a, s * a),
               Op("amax p", s * a, 0), Op("teacher mass", t * a, 0)]
        return fwd + _closed_form(sh) + narrow_out
    chunks = -(-sh.views // 2)
    fwd = [*_teacher_probs(sh), *_scale(s, sh, "forward x"),
           Op("log_softmax (chunks)", s * a, s * a),
           Op("bmm <q, log p>", chunks * t * a + s * a, 0)]
    bwd = [Op("teacher mass", t * a, 0), *_scale(s, sh, "backward x"),
           Op("softmax in place", s * a, s * a)]
    return fwd + bwd + _closed_form(sh) + narrow_out


def _cuda(sh: Shapes) -> list[Op]:
    """The kernels with the gradient written in the forward (the default for these dtypes;
    float16 writes it in the backward: see dino_core/loss/cuda.py)."""
    vb, a = sh.views * sh.batch, sh.a
    fwd = Op("forward kernel: logits, teacher, center in; gradient, row losses out",
             (sh.s + sh.t) * sh.e + sh.out_dim * a, sh.s * sh.e + vb * a)
    if sh.dtype == torch.float16:
        stats = (sh.views + 4) * sh.batch * a
        return [Op("forward kernel: logits, teacher, center in; stats out",
                   (sh.s + sh.t) * sh.e + sh.out_dim * a, vb * a + stats),
                Op("center copy", sh.out_dim * a, sh.out_dim * a),
                Op("sum of row losses", vb * a, 0),
                Op("backward kernel", (sh.s + sh.t) * sh.e + sh.out_dim * a + stats, sh.s * sh.e)]
    return [fwd, Op("sum of row losses", vb * a, 0), Op("rescale by u = 1", 0, 0)]


def ops_of(impl: str, sh: Shapes) -> list[Op]:
    """The modelled memory operations of one call of ``impl``."""
    base = impl.removesuffix(OVERWRITE).strip()
    if impl == "reference":
        return _reference(sh)
    if impl == "einsum":
        return _einsum(sh)
    if base == "fused":
        return _fused(sh, overwrite=impl.endswith(OVERWRITE))
    if base == "cuda":
        return _cuda(sh)
    raise ValueError(f"no byte model for {impl!r}")


def bytes_moved(impl: str, sh: Shapes) -> int:
    """Total modelled bytes (read + written) of one call of ``impl``."""
    return int(sum(op.read + op.write for op in ops_of(impl, sh)))
