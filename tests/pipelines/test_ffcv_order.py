"""Rank slices of the FFCV executor's per-epoch orders (pure numpy, no FFCV needed)."""
import numpy as np
import pytest

from pipelines.ffcv_backend.order import ORDERS, epoch_order, rank_slice


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("num_samples,world_size", [(40, 1), (40, 4), (43, 4), (7, 3)])
def test_rank_slices_are_disjoint_equal_and_cover_the_order(order, num_samples, world_size):
    full = epoch_order(num_samples, epoch=2, seed=5, order=order, block=4, window=2)
    assert sorted(full.tolist()) == list(range(num_samples))  # a permutation
    slices = [rank_slice(full, r, world_size) for r in range(world_size)]
    per_rank = num_samples // world_size
    assert all(len(s) == per_rank for s in slices)
    joined = np.concatenate(slices)
    assert len(set(joined.tolist())) == len(joined)  # disjoint
    assert np.array_equal(joined, full[:per_rank * world_size])  # covering, leftover < ranks


def test_orders_depend_on_seed_and_epoch_only():
    a = epoch_order(100, 0, 1)
    assert np.array_equal(a, epoch_order(100, 0, 1))
    assert not np.array_equal(a, epoch_order(100, 1, 1))
    assert not np.array_equal(a, epoch_order(100, 0, 2))
    assert np.array_equal(epoch_order(10, 3, 1, "sequential"), np.arange(10))


def test_random_order_leaves_out_different_samples_each_epoch():
    left_out = set()
    for epoch in range(20):
        full = epoch_order(10, epoch, 0)
        kept = np.concatenate([rank_slice(full, r, 3) for r in range(3)])
        left_out |= set(range(10)) - set(kept.tolist())
    assert len(left_out) > 1


def test_quasi_random_reads_blocks_locally_but_mixes_them():
    block, window = 8, 4
    full = epoch_order(256, 0, 0, "quasi_random", block=block, window=window)
    # every window of block * window positions holds exactly `window` whole blocks
    for lo in range(0, 256, block * window):
        blocks = {int(i) // block for i in full[lo:lo + block * window]}
        assert len(blocks) == window
    # ... the first window is not the first blocks on disk, and samples are shuffled in it
    first = full[:block * window]
    assert not np.array_equal(np.sort(first), np.arange(block * window))
    assert not np.array_equal(first, np.sort(first))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="order"):
        epoch_order(10, 0, 0, "shuffled")
    with pytest.raises(ValueError, match="block"):
        epoch_order(10, 0, 0, "quasi_random", block=0)
    with pytest.raises(ValueError, match="rank 3"):
        rank_slice(np.arange(10), 3, 3)
