"""Sinkhorn-Knopp centering and the DINOv2 image-level loss built on it, in float64 against
the paper's algorithm written out (every constant, explicit iterations), and on 2 gloo ranks
against the single-process result on the concatenated rows.

DINOv2's image-level term is DINO's pair cross-entropy with other teacher probabilities:
mean over pairs (teacher global t, student view v != t) of the batch mean of
``-<q_t, log_softmax(s_v / tau)>``; here ``q`` is Sinkhorn-Knopp's, and the recipe computes
it with ``fused_dino_loss`` (whose gradient is checked against the pair loop's)."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_core.loss import TeacherCentering, fused_dino_loss, sinkhorn_knopp


def paper_sinkhorn(logits, temp, iterations=3):
    """Algorithm of DINOv2's ``sinkhorn_knopp_teacher`` / SwAV, element by element in float64:
    Q = exp(t / temp)^T (K x R), /sum, then per iteration rows (prototypes) to 1/K and columns
    (samples) to 1/R; finally R * Q, transposed back."""
    t = logits.double()
    R, K = t.shape
    Q = [[math.exp(t[r, k].item() / temp) for r in range(R)] for k in range(K)]
    total = sum(sum(row) for row in Q)
    Q = [[v / total for v in row] for row in Q]
    for _ in range(iterations):
        for k in range(K):
            s = sum(Q[k])
            Q[k] = [v / s / K for v in Q[k]]
        for r in range(R):
            s = sum(Q[k][r] for k in range(K))
            for k in range(K):
                Q[k][r] = Q[k][r] / s / R
    return torch.tensor([[R * Q[k][r] for k in range(K)] for r in range(R)],
                        dtype=torch.float64)


def logits(rows, dim, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("rows, dim, temp", [(6, 5, 0.07), (4, 9, 0.04), (12, 3, 0.5),
                                             (1, 7, 0.1), (5, 1, 0.1)])
def test_sinkhorn_is_the_papers_algorithm_in_float64(rows, dim, temp):
    t = logits(rows, dim, seed=rows * 10 + dim)
    (got,) = sinkhorn_knopp([t], temp)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, paper_sinkhorn(t, temp), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(rows, dtype=torch.float64))


def test_micro_batches_are_normalised_together():
    t = logits(10, 6, seed=3)
    parts = sinkhorn_knopp([t[:3], t[3:3], t[3:]], 0.07)
    assert [p.shape[0] for p in parts] == [3, 0, 7]
    torch.testing.assert_close(torch.cat(parts), paper_sinkhorn(t, 0.07), rtol=1e-12, atol=0)


def test_float32_logits_whose_exponentials_overflow_stay_finite():
    """The paper's exp(t / temp) overflows float32 beyond t / temp = 88; the per-prototype
    maximum subtracted here cancels in the first normalisation, so the result is the
    float64 algorithm's."""
    t = logits(8, 16, seed=4, scale=6.0)  # t / 0.04 reaches ~400
    (got,) = sinkhorn_knopp([t.float()], 0.04)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), paper_sinkhorn(t.float().double(), 0.04),
                               rtol=1e-4, atol=1e-6)


def pair_loop_loss(student, q, ncrops, tau):
    """Mean over pairs (t, v != t) of the batch mean of -<q_t, log_softmax(s_v / tau)>."""
    batch = q.shape[0] // 2
    total, pairs = 0.0, 0
    for t in range(2):
        for v in range(ncrops):
            if v == t:
                continue
            s_v = student[v * batch:(v + 1) * batch]
            q_t = q[t * batch:(t + 1) * batch]
            total = total + (-(q_t * torch.log_softmax(s_v / tau, dim=-1)).sum(-1)).mean()
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("batch, ncrops, dim", [(3, 4, 11), (1, 2, 5), (2, 6, 32)])
def test_dinov2_image_level_loss_with_sinkhorn_targets_loss_and_gradient(batch, ncrops, dim):
    teacher = logits(2 * batch, dim, seed=batch + dim)
    student = logits(ncrops * batch, dim, seed=7 * dim, scale=2.0)
    q = paper_sinkhorn(teacher, 0.05)
    ref_s = student.clone().requires_grad_()
    ref = pair_loop_loss(ref_s, q, ncrops, 0.1)
    ref.backward()
    s = student.clone().requires_grad_()
    (probs,) = TeacherCentering(dim, "sinkhorn_knopp").double().probabilities([teacher], 0.05)
    got = fused_dino_loss(s, probs.view(2, batch, dim), ncrops, 0.1)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-10, atol=1e-15)


def test_ema_centering_is_the_centered_softmax_and_moves_by_the_union_mean():
    centering = TeacherCentering(4, "ema", center_momentum=0.8).double()
    centering.center.copy_(torch.tensor([[0.1, -0.2, 0.0, 0.3]]))
    a, b = logits(3, 4, seed=1), logits(5, 4, seed=2)
    pa, pb = centering.probabilities([a, b], 0.07)
    torch.testing.assert_close(pa, torch.softmax((a - centering.center) / 0.07, dim=-1))
    before = centering.center.clone()
    centering.update([a, b])
    want = 0.8 * before + 0.2 * torch.cat([a, b]).mean(dim=0, keepdim=True)
    torch.testing.assert_close(centering.state_dict()["center"], want)


# ----------------------------------------------------------------------------- two ranks
ROWS = {0: 5, 1: 3}  # unequal: masked patch tokens differ per rank


def _rank_rows(rank):
    return logits(ROWS[rank], 7, seed=100 + rank)


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank,
                            world_size=world)
    try:
        mine = _rank_rows(rank)
        split = sinkhorn_knopp([mine[:2], mine[2:]], 0.06)   # two micro-batches
        empty = sinkhorn_knopp([mine[:0] if rank == 1 else mine], 0.06)
        centering = TeacherCentering(7, "ema", center_momentum=0.5).double()
        centering.update([mine])
        torch.save({"split": torch.cat(split), "empty": empty[0],
                    "center": centering.state_dict()["center"]}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_concatenated_rows(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    whole = torch.cat([_rank_rows(0), _rank_rows(1)])
    (single,) = sinkhorn_knopp([whole], 0.06)
    torch.testing.assert_close(torch.cat([o["split"] for o in out]), single, rtol=1e-12, atol=0)
    # rank 1 without rows: rank 0's rows alone, as one process
    torch.testing.assert_close(out[0]["empty"], sinkhorn_knopp([_rank_rows(0)], 0.06)[0],
                               rtol=1e-12, atol=0)
    assert out[1]["empty"].shape == (0, 7)
    # the EMA center: the mean of the ranks' means (DINOv2's for masked tokens)
    means = torch.stack([_rank_rows(r).mean(dim=0) for r in range(2)]).mean(dim=0)
    for o in out:
        torch.testing.assert_close(o["center"], 0.5 * means.unsqueeze(0))
