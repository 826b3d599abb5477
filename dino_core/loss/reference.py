"""The DINO loss as the paper writes it: one cross-entropy per (teacher view, student view) pair.

This is the slow, obviously-correct twin every fast implementation is tested against
(Caron et al. 2021, arXiv 2104.14294, Algorithm 1 and section 3.1). It materialises a
``[B, K]`` log-softmax and product per pair, so autograd keeps ``2 * ncrops - 2`` of them.

Shapes: ``student_output [ncrops * B, K]`` and ``teacher_output [2 * B, K]``, rows ordered
view-major (rows ``v*B:(v+1)*B`` are view ``v``; the first two student views are the global
crops the teacher also sees).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, bfloat16 and float16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_teacher_probs(teacher_output: torch.Tensor, center: torch.Tensor,
                            teacher_temp: float) -> list[torch.Tensor]:
    """softmax((t - center) / teacher_temp) per global view, without gradient.

    ``teacher_output [2*B, K]``, ``center [1, K]`` -> two tensors ``[B, K]``.
    """
    acc = accumulation_dtype(teacher_output.dtype)
    centered = teacher_output.detach().to(acc) - center.to(acc)
    return list(F.softmax(centered / teacher_temp, dim=-1).chunk(2))


def reference_dino_loss(student_output: torch.Tensor, teacher_output: torch.Tensor,
                        center: torch.Tensor, teacher_temp: float, ncrops: int,
                        student_temp: float) -> torch.Tensor:
    """Mean over pairs (t, v != t) of the batch mean of ``-sum_k q_t[k] log p_v[k]``.

    ``p_v = softmax(s_v / student_temp)``; low-precision inputs are upcast to float32 first
    (as autocast does for log_softmax in the reference). Returns a 0-dim tensor.
    """
    acc = accumulation_dtype(student_output.dtype)
    student_views = (student_output.to(acc) / student_temp).chunk(ncrops)
    teacher_views = reference_teacher_probs(teacher_output, center, teacher_temp)
    total = student_output.new_zeros((), dtype=acc)
    n_pairs = 0
    for t, q in enumerate(teacher_views):
        for v, s in enumerate(student_views):
            if v == t:
                continue  # the teacher and the student saw the same crop
            per_sample = torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1)  # [B]
            total = total + per_sample.mean()
            n_pairs += 1
    return total / n_pairs


def einsum_dino_loss(student_output: torch.Tensor, teacher_output: torch.Tensor,
                     center: torch.Tensor, teacher_temp: float, ncrops: int,
                     student_temp: float) -> torch.Tensor:
    """The common vectorised formulation: one log-softmax for all views, one einsum for all
    pairs, the diagonal (same crop) masked out. Plain autograd; a benchmark baseline.

    Keeps ``log p`` for all views (``[ncrops, B, K]``) for the backward.
    """
    acc = accumulation_dtype(student_output.dtype)
    batch = teacher_output.shape[0] // 2
    log_p = F.log_softmax(student_output.to(acc) / student_temp, dim=-1)
    log_p = log_p.view(ncrops, batch, -1)                                    # [V, B, K]
    q = torch.stack(reference_teacher_probs(teacher_output, center, teacher_temp))  # [2, B, K]
    pair_ce = -torch.einsum("tbk,vbk->tv", q, log_p) / batch                 # [2, V]
    mask = torch.ones_like(pair_ce)
    mask[0, 0] = 0.0
    mask[1, 1] = 0.0
    return (pair_ce * mask).sum() / (2 * ncrops - 2)
