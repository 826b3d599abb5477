"""The kernels' math, built for the host (csrc/dino_loss_host.cpp with csrc/dino_loss_math.h),
against the reference pair loop: loss, gradient, every view kind, column chunks, upstream."""
import math

import pytest
import torch

from dino_core.loss.reference import reference_dino_loss
from tests.dino_core.loss.cases import make_logits, rel_err
from tests.dino_core.loss.host_twin import build_twin, twin_loss

TEACHER_TEMP, STUDENT_TEMP = 0.05, 0.1


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return build_twin(tmp_path_factory.mktemp("host_twin"))


def reference(student, teacher, center, ncrops, upstream):
    s = student.double().clone().requires_grad_()
    loss = reference_dino_loss(s, teacher.double(), center.double(), TEACHER_TEMP, ncrops,
                               STUDENT_TEMP)
    (loss * upstream).backward()
    return loss.detach(), s.grad


def grad_err(actual, expected, ncrops, batch, upstream):
    """max |actual - expected| in units of the gradient's scale |u| / (tau P B): the gradient
    is that scale times n p - Q, a difference of O(1) numbers, so its rounding error is
    relative to that scale, not to the (possibly tiny) largest gradient entry."""
    unit = abs(upstream) / (STUDENT_TEMP * (2 * ncrops - 2) * batch)
    return ((actual.double() - expected.double()).abs().max() / unit).item()


def stats_scale(student):
    """The largest |lse2| a row can have, about max |s| log2(e) / tau plus log2 K."""
    return (student.abs().max().item() / STUDENT_TEMP + math.log(student.shape[1])) / math.log(2)


def view_kinds(ncrops, batch):
    """Row ranges of global view 0, global view 1 and the local views."""
    return {"global 0": slice(0, batch), "global 1": slice(batch, 2 * batch),
            "local": slice(2 * batch, ncrops * batch)}


@pytest.mark.parametrize("batch,ncrops,dim,chunk", [
    (1, 2, 3, None), (3, 4, 17, 5), (2, 12, 1000, 128), (2, 6, 4099, 4096), (2, 10, 257, 300),
    (4, 3, 64, 1)])
def test_twin_equals_reference_in_float64(twin, batch, ncrops, dim, chunk):
    student, teacher, center = make_logits(batch, ncrops, dim, seed=dim)
    loss, grad, _, _ = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops,
                                 STUDENT_TEMP, upstream=-1.7, chunk=chunk)
    ref_loss, ref_grad = reference(student, teacher, center, ncrops, -1.7)
    assert rel_err(loss, ref_loss) <= 1e-12
    for kind, rows in view_kinds(ncrops, batch).items():
        if rows.stop > rows.start:
            assert grad_err(grad[rows], ref_grad[rows], ncrops, batch, -1.7) <= 1e-13, kind


@pytest.mark.parametrize("upstream", [1.0, 0.3])
def test_twin_float32_within_float32_rounding(twin, upstream):
    ncrops, batch, dim = 12, 3, 4096
    student, teacher, center = make_logits(batch, ncrops, dim, seed=7, dtype=torch.float32)
    loss, grad, _, _ = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops,
                                 STUDENT_TEMP, upstream=upstream, chunk=512)
    ref_loss, ref_grad = reference(student, teacher, center, ncrops, upstream)
    assert grad.dtype == torch.float32
    assert rel_err(loss, ref_loss) <= 1e-5
    # softmax = 2^(y - lse2) in float32: relative error ~ ln2 * eps * |lse2|, |lse2| ~ 100 here
    bound = 2 * math.log(2) * torch.finfo(torch.float32).eps * stats_scale(student)
    for kind, rows in view_kinds(ncrops, batch).items():
        assert grad_err(grad[rows], ref_grad[rows], ncrops, batch, upstream) <= bound, kind


def test_chunking_changes_only_rounding(twin):
    """The cluster's column chunks combine exactly: any chunk size, the same numbers."""
    ncrops, batch, dim = 5, 2, 999
    student, teacher, center = make_logits(batch, ncrops, dim, seed=11)
    whole = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops, STUDENT_TEMP)
    for chunk in (1, 7, 128, 500, 998):
        part = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops, STUDENT_TEMP,
                         chunk=chunk)
        for a, b in zip(part, whole):
            assert rel_err(a, b) <= 1e-13, chunk


def test_stats_hold_what_the_one_pass_backward_needs(twin):
    """lse2 of each student row, lse2 of each teacher row, teacher masses (1 up to rounding),
    and row losses n_v lse(x_v) - <Q_v, x_v>."""
    ncrops, batch, dim = 4, 3, 50
    student, teacher, center = make_logits(batch, ncrops, dim, seed=13)
    _, _, row_loss, stats = twin_loss(twin, student, teacher, center, TEACHER_TEMP, ncrops,
                                      STUDENT_TEMP, chunk=16)
    x = student / STUDENT_TEMP
    u = (teacher - center) / TEACHER_TEMP
    vb = ncrops * batch
    torch.testing.assert_close(stats[:vb], torch.logsumexp(x, -1) / math.log(2), rtol=1e-13,
                               atol=0)
    torch.testing.assert_close(stats[vb:vb + 2 * batch], torch.logsumexp(u, -1) / math.log(2),
                               rtol=1e-13, atol=0)
    torch.testing.assert_close(stats[vb + 2 * batch:], torch.ones(2 * batch, dtype=x.dtype),
                               rtol=1e-13, atol=0)
    q = torch.softmax(u, -1).view(2, batch, dim)
    big_q = torch.cat([q[1], q[0], (q[0] + q[1]).repeat(ncrops - 2, 1)])  # Q_v, view-major
    expected = big_q.sum(-1) * torch.logsumexp(x, -1) - (big_q * x).sum(-1)
    torch.testing.assert_close(row_loss, expected, rtol=1e-12, atol=1e-12)
