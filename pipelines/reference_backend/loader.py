"""The reference backend: PIL multi-crop behind a torch DataLoader.

Reads an ImageFolder tree (``data/<class>/<image>``), runs ``pipelines.reference`` on each
image in DataLoader workers, stacks each view into a batch and moves it to the device.
``pipelines.loader.MultiCropLoader`` wraps it (batch count, first batch, ``Batch``):

- order: the plan's (``pipelines.order``: a whole-dataset permutation per epoch, strided
  by GLOBAL rank, padded by wrapping); each row carries its dataset index, the sample id.
- augmentation: sample ``i`` in epoch e on rank r draws its views from its counter stream
  ``sample_rng(seed, r, e, i)`` (``pipelines.sampling.counter_stream``), so batches do not
  depend on ``num_workers``, differ between ranks, and carry the parameters the DALI and
  FFCV executors draw for the same sample.
- bad files: files the scan skips are logged once at start-up; an image that fails to
  decode while loading is logged and replaced by the next decodable sample (deterministic,
  ``pipelines.images.SampleReader``; the row keeps its sample id and stream), so a bad file
  never stops training.

Backend options: ``prefetch_factor`` (batches prefetched per worker, default 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, default_collate

from ..folder import Skipped, report_skipped, scan_image_folder
from ..images import SampleReader
from ..order import EpochPlan, PlanFor
from ..processes import worker_context
from ..reference import ReferenceMultiCrop
from ..sampling import sample_rng
from ..signals import ignore_stop_signals
from ..spec import AugmentationSpec


class MultiCropDataset(Dataset):
    """Item ``(epoch, index)`` -> (list of ``spec.num_views`` tensors [3, S, S], label)."""

    def __init__(self, reader: SampleReader, spec: AugmentationSpec, seed: int, rank: int) -> None:
        self.reader = reader
        self.multicrop = ReferenceMultiCrop(spec)
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return len(self.reader.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int, int]:
        """(views, label, sample id ``index``): a replaced file keeps the id and stream."""
        epoch, index = key
        img, label = self.reader.read(index)
        return self.multicrop(img, sample_rng(self.seed, self.rank, epoch, index)), label, index


class _EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for the epoch and first batch of the iteration in progress
    (read when the DataLoader starts iterating)."""

    def __init__(self, loader: "ReferenceLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return self.loader.plan.samples_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        plan, (epoch, first_batch) = self.loader.plan, self.loader.position
        # a resumed epoch starts at batch ``first_batch``: the earlier samples are not read
        order = plan.order(epoch)[first_batch * plan.batch_size:]
        return iter([(epoch, int(i)) for i in order])


def collate_views(batch: list[tuple[list[torch.Tensor], int, int]]
                  ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """[(views, label, sample id)] * B -> ([view tensors [B, 3, S, S]], labels int64 [B],
    sample ids int64 [B]).

    ``default_collate`` stacks straight into shared memory inside a worker (no extra copy).
    """
    views = [default_collate([sample[0][v] for sample in batch]) for v in range(len(batch[0][0]))]
    return (views, torch.tensor([sample[1] for sample in batch], dtype=torch.int64),
            torch.tensor([sample[2] for sample in batch], dtype=torch.int64))


class ReferenceLoader:
    """Multi-crop batches from an ImageFolder; see the module docstring."""

    def __init__(self, data: str | Path, spec: AugmentationSpec, device: str | torch.device,
                 num_workers: int, plan_for: PlanFor, prefetch_factor: int = 2) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        scan = scan_image_folder(data)
        report_skipped(scan.skipped)
        self.classes: list[str] = scan.classes
        self.skipped: list[Skipped] = scan.skipped
        self.plan: EpochPlan = plan_for(len(scan.samples))
        self.num_samples = self.plan.num_samples
        self.device = torch.device(device)
        self.dtype = getattr(torch, spec.output_dtype)
        self.position = (0, 0)  # (epoch, first batch) of the iteration in progress
        dataset = MultiCropDataset(SampleReader(scan.samples), spec, self.plan.seed,
                                   self.plan.rank)
        self._dataloader = DataLoader(
            dataset, batch_sampler=BatchSampler(_EpochSampler(self), self.plan.batch_size,
                                                self.plan.drop_last),
            num_workers=num_workers, collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            # its own generator: iter() draws a base seed, which must not move torch's global
            # RNG (the trainer's drop path), or a mid-epoch resume would draw differently
            generator=torch.Generator().manual_seed(self.plan.seed),
            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
            multiprocessing_context=worker_context() if num_workers > 0 else None,
            prefetch_factor=prefetch_factor if num_workers > 0 else None)
        self._active = None  # the DataLoader iterator of the epoch in progress

    def batches(self, epoch: int, first_batch: int
                ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Batches ``first_batch`` .. of ``epoch``: (views on the device, labels on the
        device, sample ids int64 [B] on the CPU)."""
        self._stop_workers()  # an abandoned earlier epoch must not keep its workers
        self.position = (int(epoch), int(first_batch))  # read by the sampler in iter()
        it = iter(self._dataloader)
        self._active = it
        try:
            for views, labels, ids in it:
                # non_blocking copies from pinned memory overlap the step on a GPU
                views = [v.to(self.device, non_blocking=True).to(self.dtype) for v in views]
                yield views, labels.to(self.device, non_blocking=True), ids
        finally:
            if self._active is it:
                self._stop_workers()

    def _stop_workers(self) -> None:
        it, self._active = self._active, None
        shutdown = getattr(it, "_shutdown_workers", None)  # absent with num_workers=0
        if shutdown is not None:
            shutdown()

    def close(self) -> None:
        """Shut the worker processes down now; iterating again later starts new ones."""
        self._stop_workers()


def build_reference_loader(data: str | Path, spec: AugmentationSpec,
                           device: str | torch.device, num_workers: int, plan_for: PlanFor,
                           **opts) -> ReferenceLoader:
    """``build_loader``'s reference backend. Options: ``prefetch_factor`` (int, default 2)."""
    unknown = sorted(set(opts) - {"prefetch_factor"})
    if unknown:
        raise TypeError(f"reference backend: unknown option(s) {', '.join(unknown)} "
                        "(known: prefetch_factor)")
    return ReferenceLoader(data, spec, device, num_workers, plan_for, **opts)
