"""Center EMA: the formula, the deferred all-reduce, and the mean over ranks (2 gloo ranks)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_core.loss import CenterEMA, DINOLoss

DIM, BATCH, NCROPS, MOMENTUM = 8, 3, 4, 0.9


def rank_teacher(rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(2 * BATCH, DIM, generator=g) + rank


def test_ema_without_process_group_applies_at_once():
    ema = CenterEMA(0.75)
    center = torch.full((1, 4), 2.0)
    teacher = torch.arange(8.0).view(2, 4)
    ema.launch(teacher, center)
    assert not ema.pending
    torch.testing.assert_close(center, 0.75 * 2.0 + 0.25 * teacher.mean(0, keepdim=True))


def test_ema_accumulates_low_precision_rows_in_float32():
    ema = CenterEMA(0.0)
    center = torch.zeros(1, 2)
    teacher = torch.full((512, 2), 1.0 + 2.0 ** -7, dtype=torch.bfloat16)
    ema.launch(teacher, center)
    assert center.dtype == torch.float32
    torch.testing.assert_close(center, torch.full((1, 2), 1.0 + 2.0 ** -7))


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank,
                            world_size=world)
    try:
        loss_fn = DINOLoss(DIM, NCROPS, center_momentum=MOMENTUM)
        student = torch.zeros(NCROPS * BATCH, DIM)
        loss_fn(student, rank_teacher(rank, 0), 0.04)
        deferred = loss_fn._center_ema.pending and loss_fn.center.abs().sum().item() == 0
        loss_fn(student, rank_teacher(rank, 1), 0.04)  # applies step 0's update first
        after_two = loss_fn.state_dict()["center"].clone()  # flushes step 1's update
        loss_fn(student, rank_teacher(rank, 2), 0.04)
        loss_fn.load_state_dict({"center": torch.full((1, DIM), 5.0)})  # drops step 2's
        after_load = loss_fn.state_dict()["center"].clone()
        torch.save({"deferred": deferred, "center": after_two, "after_load": after_load},
                   f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduced_center_is_the_mean_over_ranks(tmp_path):
    world = 2
    mp.start_processes(_worker, args=(world, str(tmp_path)), nprocs=world, start_method="spawn")
    expected = torch.zeros(1, DIM)
    for step in range(2):
        rows = torch.cat([rank_teacher(r, step) for r in range(world)])
        expected = MOMENTUM * expected + (1 - MOMENTUM) * rows.mean(dim=0, keepdim=True)
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert out["deferred"], "the update should wait for the next use of the center"
        torch.testing.assert_close(out["center"], expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out["after_load"], torch.full((1, DIM), 5.0), rtol=0, atol=0)


def test_bad_momentum():
    with pytest.raises(ValueError, match="center_momentum"):
        CenterEMA(-0.1)
