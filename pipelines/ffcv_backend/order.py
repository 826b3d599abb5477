"""Which samples each rank reads in each epoch (pure numpy; no FFCV needed).

Every rank computes the same global order for an epoch from (seed, epoch) alone, then keeps
its own contiguous slice of it. Slices are disjoint and of equal length on every rank
(``num_samples // world_size``; the few samples left over change from epoch to epoch under
a random order), so no process group is needed to shard, and ``len(loader)`` agrees on all
ranks. Orders:

- "random": a fresh permutation of the whole dataset every epoch.
- "quasi_random": the dataset is cut into blocks of ``block`` consecutive samples (which
  sit next to each other in the .beton, so a block shares pages); the block order is
  permuted and samples are shuffled within each window of ``window`` blocks. Reads are
  local, batches still mix ``window`` blocks. Meant for datasets larger than RAM
  (``os_cache=False``); FFCV's own quasi-random order has no distributed mode.
- "sequential": dataset order, no shuffling (evaluation, debugging).
"""
from __future__ import annotations

import numpy as np

ORDERS = ("random", "quasi_random", "sequential")


def epoch_order(num_samples: int, epoch: int, seed: int, order: str = "random",
                block: int = 256, window: int = 8) -> np.ndarray:
    """The global visiting order of one epoch: int64 [num_samples], the same on all ranks."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
    if order == "sequential":
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, ORDERS.index(order)]))
    if order == "random":
        return rng.permutation(num_samples).astype(np.int64)
    if block < 1 or window < 1:
        raise ValueError(f"quasi_random needs block >= 1 and window >= 1, got {block}, {window}")
    starts = rng.permutation(np.arange(0, num_samples, block))
    out = np.concatenate([np.arange(s, min(s + block, num_samples)) for s in starts])
    span = block * window
    for lo in range(0, num_samples, span):
        rng.shuffle(out[lo:lo + span])
    return out.astype(np.int64)


def rank_slice(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``order``: len(order) // world_size samples."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    per_rank = len(order) // world_size
    return order[rank * per_rank:(rank + 1) * per_rank]
