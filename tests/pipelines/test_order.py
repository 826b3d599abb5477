"""The epoch order every backend reads (pipelines/order.py; pure numpy, no backend needed)."""
import numpy as np
import pytest

from pipelines.order import MODES, EpochPlan, epoch_order, global_order


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_samples,world_size", [(40, 1), (40, 4), (43, 4), (7, 3)])
def test_rank_shares_are_strided_equal_padded_and_cover_the_order(mode, num_samples,
                                                                   world_size):
    full = global_order(num_samples, seed=5, epoch=2, mode=mode, block=4, window=2)
    assert sorted(full.tolist()) == list(range(num_samples))  # a permutation
    shares = [epoch_order(num_samples, 5, 2, r, world_size, mode, block=4, window=2)
              for r in range(world_size)]
    per_rank = -(-num_samples // world_size)
    assert all(len(s) == per_rank for s in shares)
    padded = np.resize(full, per_rank * world_size)  # wrapped to a multiple of world_size
    for r, share in enumerate(shares):
        assert np.array_equal(share, padded[r::world_size])  # rank r: every world_size-th
    joined = np.concatenate(shares)
    assert set(joined.tolist()) == set(range(num_samples))  # together every sample
    assert len(joined) - len(set(joined.tolist())) == per_rank * world_size - num_samples


@pytest.mark.parametrize("n, world", [(15, 1), (15, 2), (16, 4), (5, 3), (2, 4)])
def test_epoch_order_covers_and_is_equal_length(n, world):
    parts = [epoch_order(n, 7, 3, r, world) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(p) == per_rank and p.dtype == np.int64 for p in parts)
    everything = np.concatenate(parts)
    assert set(everything.tolist()) == set(range(n))
    if n % world == 0:  # no padding: the shares are disjoint
        assert len(set(everything.tolist())) == n


def test_the_random_order_is_the_reference_loaders_bit_for_bit():
    """Golden values of the reference loader's order before the order was shared: the
    quickstart and every resumed run read the same samples as before."""
    assert epoch_order(10, 0, 0, 0, 1).tolist() == [8, 2, 1, 3, 4, 0, 7, 9, 6, 5]
    assert epoch_order(10, 7, 3, 1, 3).tolist() == [2, 9, 8, 6]


def test_orders_depend_on_seed_and_epoch_only():
    a = epoch_order(50, 1, 2, 0, 1)
    assert np.array_equal(a, epoch_order(50, 1, 2, 0, 1))
    assert not np.array_equal(a, epoch_order(50, 1, 3, 0, 1))
    assert not np.array_equal(a, epoch_order(50, 2, 2, 0, 1))
    assert np.array_equal(epoch_order(10, 1, 2, 0, 1, "sequential"), np.arange(10))
    assert np.array_equal(epoch_order(10, 1, 2, 1, 2, "sequential"), np.arange(1, 10, 2))
    for mode in ("random", "quasi_random"):
        g = global_order(100, 1, 0, mode, block=4)
        assert np.array_equal(g, global_order(100, 1, 0, mode, block=4))
        assert not np.array_equal(g, global_order(100, 1, 1, mode, block=4))
        assert not np.array_equal(g, global_order(100, 2, 0, mode, block=4))


def test_random_order_pads_with_other_samples_each_epoch():
    """Nothing is left out (every epoch reads every sample); the few samples read twice to
    pad the shares change from epoch to epoch under a random order."""
    repeated = set()
    for epoch in range(20):
        joined = np.concatenate([epoch_order(10, 0, epoch, r, 3) for r in range(3)])
        assert set(joined.tolist()) == set(range(10))
        values, counts = np.unique(joined, return_counts=True)
        repeated |= set(values[counts > 1].tolist())
    assert len(repeated) > 2


def test_quasi_random_reads_blocks_locally_but_mixes_them():
    block, window = 8, 4
    full = global_order(256, 0, 0, "quasi_random", block=block, window=window)
    # every window of block * window positions holds exactly `window` whole blocks
    for lo in range(0, 256, block * window):
        blocks = {int(i) // block for i in full[lo:lo + block * window]}
        assert len(blocks) == window
    # ... the first window is not the first blocks on disk, and samples are shuffled in it
    first = full[:block * window]
    assert not np.array_equal(np.sort(first), np.arange(block * window))
    assert not np.array_equal(first, np.sort(first))


def test_plan_batches_and_batch_count():
    plan = EpochPlan(num_samples=15, batch_size=4, seed=3, rank=1, world_size=2)
    assert plan.samples_per_rank == 8 and plan.batches_per_epoch == 2
    assert EpochPlan(15, 3, rank=1, world_size=2, drop_last=False).batches_per_epoch == 3
    order = plan.order(5)
    assert np.array_equal(order, epoch_order(15, 3, 5, 1, 2))
    assert np.array_equal(np.concatenate([plan.batch_indices(5, t) for t in range(2)]), order)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="order"):
        global_order(10, 0, 0, "shuffled")
    with pytest.raises(ValueError, match="block"):
        global_order(10, 0, 0, "quasi_random", block=0)
    with pytest.raises(ValueError, match="rank 3"):
        epoch_order(10, 0, 0, 3, 3)
    with pytest.raises(ValueError, match="batch_size"):
        EpochPlan(10, 0)
