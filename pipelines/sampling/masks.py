"""Block-wise patch masks of a batch's global views (iBOT / DINOv2), from the counter stream.

The masks of masked-image-modelling recipes are a property of a whole batch, not of a
sample (DINOv2 masks exactly ``int(probability * G)`` of the batch's ``G`` global crops and
spreads their ratios over the range), so they are drawn once per batch, by the loader
wrapper, from a stream keyed by (seed, global rank, epoch, batch index): ``mask_key``. That
key is the batch's whatever the backend, and a resumed epoch's batch k draws the same masks
as batch k of the whole epoch. The key chain is tagged, so it never meets the per-sample
augmentation streams (``counter_stream.sample_key``).

The draw, in order (``MaskingSpec`` in ``pipelines.spec`` names the numbers; DINOv2's
``collate_data_and_cast`` and BEiT's ``MaskingGenerator`` are what it follows):

1. ``n = int(probability * G)`` crops are masked; ``bounds = linspace(ratio[0], ratio[1],
   n + 1)``; for i = 0 .. n-1: ``r = uniform(bounds[i], bounds[i + 1])``, then crop i's mask
   is ``block_mask(int(N * r))`` (its draws follow); crops n .. G-1 stay unmasked.
2. The G masks are shuffled: ``permutation(G)`` (Fisher-Yates, ``CounterRNG``), mask
   ``perm[j]`` going to row j.

``block_mask(target)`` adds rectangles until ``target`` patches are masked or a block
cannot be placed: per block up to ten tries of an area ``uniform(min_block_patches, cap)``
(``cap = min(target - masked, max_block_fraction * N)``) and an aspect ratio
``exp(uniform(log aspect[0], log aspect[1]))``, ``h = round(sqrt(area * aspect))``,
``w = round(sqrt(area / aspect))``; a rectangle strictly smaller than the grid is placed at
``top = integers(0, rows - h + 1)``, ``left = integers(0, cols - w + 1)`` and taken when it
adds between 1 and ``cap`` new patches; a block that adds none after ten tries ends the mask
(so a crop may end below its target, never above it). Python's ``round`` (ties to even) as
BEiT's.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..spec import AugmentationSpec, MaskingSpec
from .counter_stream import CounterRNG, epoch_key, splitmix64

# Keeps the masks' keys apart from the per-sample streams' (``sample_key``).
MASK_TAG = 0x4D41534B  # "MASK"
BLOCK_TRIES = 10


def mask_key(seed: int, rank: int, epoch: int, batch: int) -> int:
    """Key of the masks of batch ``batch`` (0-based, in the epoch) of (seed, global rank,
    epoch)."""
    return splitmix64(splitmix64(epoch_key(seed, rank, epoch) ^ MASK_TAG) ^ int(batch))


def draw_block(masking: MaskingSpec, mask: np.ndarray, cap: float,
               rng: CounterRNG) -> tuple[int, int, int, int] | None:
    """One block's tries (see the module docstring): the rectangle ``(top, left, h, w)``
    that adds between 1 and ``cap`` new patches to ``mask``, or None after ten failures."""
    rows, cols = mask.shape
    log_lo, log_hi = (math.log(a) for a in masking.aspect)
    for _ in range(BLOCK_TRIES):
        area = rng.uniform(masking.min_block_patches, cap)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < cols and h < rows:
            top = rng.integers(0, rows - h + 1)
            left = rng.integers(0, cols - w + 1)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= cap:
                return top, left, h, w
    return None


def block_mask(masking: MaskingSpec, rows: int, cols: int, target: int,
               rng: CounterRNG) -> np.ndarray:
    """One crop's mask, bool ``[rows, cols]`` with at most ``target`` patches masked: blocks
    (``draw_block``) until the target is reached or a block cannot be placed."""
    mask = np.zeros((rows, cols), dtype=bool)
    block_cap = masking.max_block_fraction * rows * cols
    count = 0
    while count < target:
        block = draw_block(masking, mask, min(target - count, block_cap), rng)
        if block is None:
            break
        top, left, h, w = block
        count += h * w - int(mask[top:top + h, left:left + w].sum())
        mask[top:top + h, left:left + w] = True
    return mask


def batch_masks(masking: MaskingSpec, crops: int, rows: int, cols: int,
                rng: CounterRNG) -> np.ndarray:
    """The masks of one batch's ``crops`` global crops, bool ``[crops, rows, cols]`` (see the
    module docstring for the draw)."""
    n_masked = int(crops * masking.probability)
    bounds = np.linspace(masking.ratio[0], masking.ratio[1], n_masked + 1)
    masks = np.zeros((crops, rows, cols), dtype=bool)
    patches = rows * cols
    for i in range(n_masked):
        ratio = rng.uniform(float(bounds[i]), float(bounds[i + 1]))
        masks[i] = block_mask(masking, rows, cols, int(patches * ratio), rng)
    return masks[rng.permutation(crops)]


def draw_batch_masks(spec: AugmentationSpec, seed: int, rank: int, epoch: int, batch: int,
                     batch_size: int) -> torch.Tensor:
    """``Batch.masks`` of batch ``batch`` of ``epoch`` on ``rank``: bool
    ``[num_global * batch_size, rows, cols]`` on the CPU, row ``v * batch_size + b`` global
    view v of sample b. ``spec.masking`` must be set."""
    if spec.masking is None:
        raise ValueError("the augmentation spec has no masking section")
    rows, cols = spec.mask_grid
    rng = CounterRNG(mask_key(seed, rank, epoch, batch))
    return torch.from_numpy(batch_masks(spec.masking, spec.num_global * batch_size, rows, cols,
                                        rng))
