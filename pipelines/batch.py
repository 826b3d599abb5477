"""``Batch``: what every loader yields, whatever its backend.

    for batch in loader:            # pipelines.build_loader(...)
        batch.views                 # list of spec.num_views tensors, globals first
        batch.labels                # int64 [B] (-1 for unlabeled data)
        batch.sample_ids            # int64 [B] dataset indices, in epoch order, on the CPU
        batch.masks                 # None, or bool [num_global * B, gh, gw] (view-major, CPU)

Views are normalised, in the spec's output dtype, on the loader's device: the global views
``[B, 3, G, G]`` first, then the local views ``[B, 3, L, L]``. ``sample_ids`` say which
dataset samples the rows are (the same for every backend for a given seed, epoch, rank and
world size: ``pipelines.order``), so backends can be compared step for step and a resumed
epoch checked; they stay on the host, so reading them costs no device sync. A row whose
file could not be decoded shows a replacement image but keeps its id (and its stream).
``masks`` are the masked-patch masks of the global views when the spec asks for them
(``spec.masking``, recipes with a masked-patch loss), drawn by the loader wrapper from the
batch's counter stream (``pipelines.sampling.masks``); row ``v * B + b`` is global view v of
sample b, like the rows of a concatenated view tensor. They stay on the CPU, like
``sample_ids``: the recipe derives the masked positions from them on the host (no device
sync) and moves both to the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    views: list[torch.Tensor]
    labels: torch.Tensor
    sample_ids: torch.Tensor
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("a batch needs at least one view")
        b = self.views[0].shape[0]
        if any(v.shape[0] != b for v in self.views):
            raise ValueError(f"views of one batch must share the batch size, got "
                             f"{[tuple(v.shape) for v in self.views]}")
        if self.labels.shape != (b,) or self.sample_ids.shape != (b,):
            raise ValueError(f"labels and sample_ids must be [{b}], got "
                             f"{tuple(self.labels.shape)} and {tuple(self.sample_ids.shape)}")

    @property
    def size(self) -> int:
        """Samples in the batch (B)."""
        return self.views[0].shape[0]
