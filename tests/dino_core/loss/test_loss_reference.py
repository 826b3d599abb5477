"""The reference pair loop against an independent, per-sample computation, and the schedule."""
import math

import pytest
import torch
import torch.nn.functional as F

from dino_core.loss import einsum_dino_loss, reference_dino_loss


def per_sample_loss(student, teacher, center, teacher_temp, ncrops, student_temp):
    """DINO loss with explicit loops over pairs and samples, one 1-d log_softmax at a time."""
    batch = teacher.shape[0] // 2
    pair_means = []
    for t in range(2):
        for v in range(ncrops):
            if v == t:
                continue
            terms = []
            for b in range(batch):
                q = F.softmax((teacher[t * batch + b] - center[0]) / teacher_temp, dim=0)
                log_p = F.log_softmax(student[v * batch + b] / student_temp, dim=0)
                terms.append(-(q * log_p).sum())
            pair_means.append(sum(terms) / batch)
    assert len(pair_means) == 2 * ncrops - 2
    return sum(pair_means) / len(pair_means)


@pytest.mark.parametrize("batch,ncrops,dim", [(1, 2, 5), (3, 4, 7), (2, 6, 16)])
@pytest.mark.parametrize("teacher_temp,student_temp", [(0.04, 0.1), (0.07, 0.2)])
def test_reference_matches_per_sample_loops(batch, ncrops, dim, teacher_temp, student_temp):
    g = torch.Generator().manual_seed(batch * 100 + ncrops * 10 + dim)
    student = torch.randn(ncrops * batch, dim, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * batch, dim, generator=g, dtype=torch.float64)
    center = 0.1 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    s1 = student.clone().requires_grad_()
    s2 = student.clone().requires_grad_()
    ref = reference_dino_loss(s1, teacher, center, teacher_temp, ncrops, student_temp)
    loops = per_sample_loss(s2, teacher, center, teacher_temp, ncrops, student_temp)
    ref.backward()
    loops.backward()
    torch.testing.assert_close(ref, loops, rtol=1e-12, atol=0)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-10, atol=1e-14)


def test_uniform_teacher_and_flat_student_give_log_k():
    """q and p uniform over K classes: every pair's cross-entropy is exactly log K."""
    batch, ncrops, dim = 3, 5, 11
    loss = reference_dino_loss(torch.zeros(ncrops * batch, dim, dtype=torch.float64),
                               torch.full((2 * batch, dim), 3.0, dtype=torch.float64),
                               torch.zeros(1, dim), 0.04, ncrops, 0.1)
    assert loss.item() == pytest.approx(math.log(dim), rel=1e-14)


def test_teacher_row_matching_student_is_skipped():
    """Only pairs with v != t count: with 2 views, each global view meets the other one."""
    dim = 6
    g = torch.Generator().manual_seed(3)
    views = torch.randn(2, dim, generator=g, dtype=torch.float64)
    loss = reference_dino_loss(views, views, torch.zeros(1, dim), 0.1, 2, 0.1)
    q = F.softmax(views / 0.1, dim=-1)
    log_p = F.log_softmax(views / 0.1, dim=-1)
    expected = (-(q[0] * log_p[1]).sum() - (q[1] * log_p[0]).sum()) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("batch,ncrops,dim", [(2, 2, 9), (3, 7, 13)])
def test_einsum_formulation_matches_reference(batch, ncrops, dim):
    g = torch.Generator().manual_seed(11)
    student = torch.randn(ncrops * batch, dim, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * batch, dim, generator=g, dtype=torch.float64)
    center = torch.randn(1, dim, generator=g, dtype=torch.float64)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    ref = reference_dino_loss(s1, teacher, center, 0.05, ncrops, 0.1)
    ein = einsum_dino_loss(s2, teacher, center, 0.05, ncrops, 0.1)
    ref.backward()
    ein.backward()
    torch.testing.assert_close(ein, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-10, atol=1e-14)
