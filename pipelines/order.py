"""The epoch order: which dataset samples each rank reads, batch by batch (every backend).

One pure function of (num_samples, seed, epoch, rank, world_size, mode), so every backend
reads the same samples in the same order for the same run: backends can be compared step
for step, and a mid-epoch resume knows which samples batch k holds without reading any.

Per epoch a GLOBAL order of the whole dataset (the same on every rank), then:

- padding: the global order is extended by wrapping to a multiple of ``world_size``;
- sharding: rank r takes entries r, r + world_size, r + 2 * world_size, ...

so every rank reads ``ceil(num_samples / world_size)`` samples (``len(loader)`` agrees on
all ranks without a process group), ranks are disjoint up to the padding (at most
``world_size - 1`` samples are read twice per epoch), and together they read every sample.

Global orders (``MODES``):

- "random": a permutation of the whole dataset from ``SeedSequence([seed, epoch, tag])``, a
  new one every epoch (the reference loader's order since the start, kept bit for bit).
- "quasi_random": the dataset cut into blocks of ``block`` consecutive samples (which sit
  next to each other on disk, e.g. in a .beton, so a block shares pages); the block order is
  permuted and samples are shuffled within each window of ``window`` blocks. Reads are
  local, and the strided sharding still mixes ``window`` blocks into every rank's batches.
  Meant for datasets larger than RAM (FFCV's ``os_cache=False``).
- "sequential": dataset order, no shuffling (evaluation, debugging).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

MODES = ("random", "quasi_random", "sequential")
# Keeps each mode's stream apart from the per-sample augmentation streams (and each other).
_TAGS = {"random": 0x5045524D, "quasi_random": 0x51524E44}


def check_mode(mode: str, block: int = 256, window: int = 8) -> None:
    """ValueError naming a mode that is not one of MODES, or quasi_random's bad sizes."""
    if mode not in MODES:
        raise ValueError(f"unknown order {mode!r}; choose from {', '.join(MODES)}")
    if mode == "quasi_random" and (block < 1 or window < 1):
        raise ValueError(f"quasi_random order needs block >= 1 and window >= 1, got "
                         f"{block}, {window}")


def global_order(num_samples: int, seed: int, epoch: int, mode: str = "random",
                 block: int = 256, window: int = 8) -> np.ndarray:
    """The whole dataset's visiting order in ``epoch``: int64 [num_samples], every rank's."""
    check_mode(mode, block, window)
    if mode == "sequential":
        return np.arange(num_samples, dtype=np.int64)
    gen = np.random.default_rng(np.random.SeedSequence([seed, epoch, _TAGS[mode]]))
    if mode == "random":
        return gen.permutation(num_samples).astype(np.int64)
    starts = gen.permutation(np.arange(0, num_samples, block))
    out = np.concatenate([np.arange(s, min(s + block, num_samples)) for s in starts])
    span = block * window
    for lo in range(0, num_samples, span):
        gen.shuffle(out[lo:lo + span])
    return out.astype(np.int64)


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int, world_size: int,
                mode: str = "random", block: int = 256, window: int = 8) -> np.ndarray:
    """Dataset indices rank ``rank`` reads in ``epoch``, in order: int64
    [ceil(num_samples / world_size)] (see the module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    order = global_order(num_samples, seed, epoch, mode, block, window)
    per_rank = math.ceil(num_samples / world_size)
    return np.resize(order, per_rank * world_size)[rank::world_size].copy()


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epochs cut into batches: ``epoch_order`` and the batch-count rule.

    ``batches_per_epoch`` is ``len(loader)`` (the same on every rank); batch t of an epoch
    holds ``order(epoch)[t * batch_size:(t + 1) * batch_size]``. With ``drop_last`` the
    incomplete last batch is dropped, else it is smaller. A plain picklable value: the DALI
    feed's worker processes carry it.
    """

    num_samples: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    mode: str = "random"
    drop_last: bool = True
    block: int = 256
    window: int = 8

    def __post_init__(self) -> None:
        check_mode(self.mode, self.block, self.window)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices this rank reads in ``epoch``: int64 [samples_per_rank]."""
        return epoch_order(self.num_samples, self.seed, epoch, self.rank, self.world_size,
                           self.mode, self.block, self.window)

    def batch_indices(self, epoch: int, t: int) -> np.ndarray:
        """The dataset indices of batch ``t`` of ``epoch``: int64 [batch_size] (fewer for a
        smaller last batch)."""
        return self.order(epoch)[t * self.batch_size:(t + 1) * self.batch_size]


# A dataset size -> the run's plan for it: what ``build_loader`` hands a backend, which knows
# the size only once it has opened the data (``functools.partial`` of EpochPlan).
PlanFor = Callable[[int], EpochPlan]
