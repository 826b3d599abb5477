"""Gradient accumulation: one optimizer step from N micro-batches of one loader batch.

The loader's batch (``data.batch_size`` images per rank) is cut into ``grad_accum``
micro-batches of equal size; the step (``step.TrainStep``) computes the teacher targets of
all of them first (normalised over the whole batch: DINO's center, Sinkhorn-Knopp), then
each micro-batch's student losses, divided by N, and their backward (the strategy's
``accumulating`` for all but the last: no cross-rank reduction until the sum is complete),
the recipe's ``end_step`` before the last backward. N micro-batches of B images are then one
batch of N * B images, up to the order of floating-point sums (tests/dino_core/train/
test_accumulation.py), with the activation memory of B images.

Why cut the loader's batch rather than fetch N batches: one loader batch stays one
optimizer step, so the schedules (per step), the data position of a checkpoint (batches
of the epoch), the linear lr scaling (``batch_size * world_size``) and every resume are
exactly those of a run without accumulation; the price is the loader's batch of N * B
images held at once, which is small next to the activations of even one micro-batch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.batch import Batch


def split_batch(batch: "Batch", n: int) -> list["Batch"]:
    """``batch`` (B samples) as ``n`` micro-batches of B / n consecutive samples (views of
    its tensors, no copy). Every per-sample field is cut: views ``[B, ...]``, labels and
    sample ids ``[B]``, masks ``[G * B, ...]`` (view-major: rows ``v * B + b``)."""
    if n == 1:
        return [batch]
    b = batch.size
    if b % n:
        raise ValueError(f"a batch of {b} samples cannot be cut into {n} equal micro-batches "
                         "(grad_accum must divide data.batch_size)")
    m = b // n
    micro = []
    for i in range(n):
        rows = slice(i * m, (i + 1) * m)
        masks = batch.masks
        if masks is not None:  # [G * B, ...] -> [G, B, ...] -> these rows of every view
            masks = masks.unflatten(0, (masks.shape[0] // b, b))[:, rows].flatten(0, 1)
        micro.append(replace(batch, views=[v[rows] for v in batch.views],
                             labels=batch.labels[rows], sample_ids=batch.sample_ids[rows],
                             masks=masks))
    return micro
