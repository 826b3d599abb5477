"""The reference backend of ``build_loader``: PIL multi-crop behind a torch DataLoader.

Reads an ImageFolder tree (``data/<class>/<image>``), runs ``pipelines.reference`` on each
image in DataLoader workers, stacks each view into a batch and moves it to the device. It
honours the ``MultiCropLoader`` contract of ``pipelines/loader.py``:

- order: one permutation of the whole dataset per epoch from (seed, epoch) (identity order
  when ``shuffle=False``), padded by wrapping to a multiple of ``world_size``; GLOBAL rank r
  takes every ``world_size``-th entry from r, so ranks are disjoint up to the padding and
  all yield the same number of batches (``epoch_indices``).
- augmentation: sample ``i`` in epoch e on rank r draws its views from its counter stream
  ``sample_rng(seed, r, e, i)`` (``pipelines.sampling.counter_stream``), so batches do not depend on
  ``num_workers``, differ between ranks, and carry the parameters the DALI and FFCV
  executors draw for the same sample.
- bad files: files the scan skips are logged once at start-up; an image that fails to
  decode while loading is logged and replaced by the next decodable sample (deterministic),
  so a bad file never stops training.

Backend options: ``prefetch_factor`` (batches prefetched per worker, default 2).
"""
from __future__ import annotations

import logging
import math
import signal
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, default_collate

from .folder import DatasetError, Skipped, scan_image_folder
from .reference import ReferenceMultiCrop
from .sampling import sample_rng
from .spec import AugmentationSpec

log = logging.getLogger(__name__)

_PERMUTATION_TAG = 0x5045524D  # keeps the epoch permutation stream apart from sample streams
MAX_LOGGED_SKIPS = 50


def epoch_indices(num_samples: int, seed: int, epoch: int, rank: int, world_size: int,
                  shuffle: bool = True) -> np.ndarray:
    """Dataset indices rank ``rank`` reads in ``epoch``: int64 [ceil(num_samples / world_size)].

    The whole-dataset permutation depends only on (seed, epoch), so every rank computes the
    same one and takes its own strided slice; wrapping pads the order to equal lengths.
    """
    if shuffle:
        gen = np.random.default_rng(np.random.SeedSequence([seed, epoch, _PERMUTATION_TAG]))
        order = gen.permutation(num_samples)
    else:
        order = np.arange(num_samples)
    per_rank = math.ceil(num_samples / world_size)
    return np.resize(order, per_rank * world_size)[rank::world_size].astype(np.int64)


def open_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully as RGB; raises on anything unusable (bombs included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")


def report_skipped(skipped: list[Skipped]) -> None:
    """Log what a folder scan left out: one line per file, up to MAX_LOGGED_SKIPS."""
    for s in skipped[:MAX_LOGGED_SKIPS]:
        log.warning("%s", s)
    if len(skipped) > MAX_LOGGED_SKIPS:
        log.warning("... and %d more skipped files (see .skipped)", len(skipped) - MAX_LOGGED_SKIPS)


class SampleReader:
    """Decodes samples by index; a file that fails is replaced by the next one that decodes.

    The replacement for sample i is the first decodable sample among i+1, i+2, ... (mod n),
    so the substitution is deterministic and usually keeps the class (samples are sorted by
    class). Each failing file is logged once per process. Returns (RGB image, its label).
    """

    def __init__(self, samples: list[tuple[str, int]], max_tries: int = 64) -> None:
        if not samples:
            raise DatasetError("no samples to read")
        self.samples = samples
        self.max_tries = min(max_tries, len(samples))
        self._reported: set[str] = set()

    def read(self, index: int) -> tuple[Image.Image, int]:
        failures = []
        for k in range(self.max_tries):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                return open_rgb(path), label
            except Exception as e:  # hostile files raise a zoo of types
                failures.append(path)
                if path not in self._reported:
                    self._reported.add(path)
                    log.warning("cannot decode %s (%s: %s); using the next sample instead",
                                path, type(e).__name__, e)
        raise DatasetError(f"{len(failures)} consecutive samples failed to decode, starting at "
                           f"{failures[0]}: is the dataset readable?")


class MultiCropDataset(Dataset):
    """Item ``(epoch, index)`` -> (list of ``spec.num_views`` tensors [3, S, S], label)."""

    def __init__(self, reader: SampleReader, spec: AugmentationSpec, seed: int, rank: int) -> None:
        self.reader = reader
        self.multicrop = ReferenceMultiCrop(spec)
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return len(self.reader.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int]:
        epoch, index = key
        img, label = self.reader.read(index)
        return self.multicrop(img, sample_rng(self.seed, self.rank, epoch, index)), label


class _EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for the loader's current epoch (read when iteration starts)."""

    def __init__(self, loader: "ReferenceLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return self.loader.samples_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        ld = self.loader
        epoch = ld.epoch
        idx = epoch_indices(ld.num_samples, ld.seed, epoch, ld.rank, ld.world_size, ld.shuffle)
        # a resumed epoch starts at batch ``first_batch``: the earlier samples are not read
        return iter([(epoch, int(i)) for i in idx[ld.first_batch * ld.batch_size:]])


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM / SIGUSR1 are the trainer's to handle (it
    finishes its step and checkpoints, ``dino_core/preemption.py``). A scheduler that signals
    every process of a job (``scancel --signal``) would otherwise kill the workers under it,
    and their death would abort that step. Workers still exit with the main process."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def collate_views(batch: list[tuple[list[torch.Tensor], int]]
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[(views, label)] * B -> ([view tensors [B, 3, S, S]], labels int64 [B]).

    ``default_collate`` stacks straight into shared memory inside a worker (no extra copy).
    """
    views = [default_collate([sample[0][v] for sample in batch]) for v in range(len(batch[0][0]))]
    return views, torch.tensor([sample[1] for sample in batch], dtype=torch.int64)


class ReferenceLoader:
    """Multi-crop batches from an ImageFolder; see the module docstring for the contract."""

    def __init__(self, data: str | Path, batch_size: int, spec: AugmentationSpec,
                 device: str | torch.device, num_workers: int, seed: int, rank: int,
                 world_size: int, shuffle: bool, drop_last: bool, prefetch_factor: int = 2
                 ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        scan = scan_image_folder(data)
        report_skipped(scan.skipped)
        self.classes: list[str] = scan.classes
        self.skipped: list[Skipped] = scan.skipped
        self.num_samples = len(scan.samples)
        self.samples_per_rank = math.ceil(self.num_samples / world_size)
        self.batch_size, self.drop_last = batch_size, drop_last
        if drop_last and self.samples_per_rank < batch_size:
            raise DatasetError(
                f"{data}: {self.num_samples} images give {self.samples_per_rank} per rank "
                f"(world size {world_size}), fewer than one batch of {batch_size}; lower the "
                "batch size or pass drop_last=False")
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = getattr(torch, spec.output_dtype)
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch, self.first_batch = 0, 0
        dataset = MultiCropDataset(SampleReader(scan.samples), spec, seed, rank)
        self._dataloader = DataLoader(
            dataset, batch_sampler=BatchSampler(_EpochSampler(self), batch_size, drop_last),
            num_workers=num_workers, collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            # its own generator: iter() draws a base seed, which must not move torch's global
            # RNG (the trainer's drop path), or a mid-epoch resume would draw differently
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
            prefetch_factor=prefetch_factor if num_workers > 0 else None)
        self._active = None  # the DataLoader iterator of the epoch in progress

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Select the epoch's permutation and augmentation streams; call before iterating.
        The next iteration yields batches ``first_batch`` .. ``len(self) - 1`` of the epoch
        (a mid-epoch resume), skipping the earlier ones without reading them."""
        if not 0 <= first_batch <= len(self):
            raise ValueError(f"first_batch {first_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.first_batch = int(epoch), int(first_batch)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self._stop_workers()  # an abandoned earlier epoch must not keep its workers
        it = iter(self._dataloader)
        self._active = it
        try:
            for views, labels in it:
                # non_blocking copies from pinned memory overlap the step on a GPU
                views = [v.to(self.device, non_blocking=True).to(self.dtype) for v in views]
                yield views, labels.to(self.device, non_blocking=True)
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

    def __enter__(self) -> "ReferenceLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_reference_loader(data: str | Path, batch_size: int, spec: AugmentationSpec,
                           device: str | torch.device, num_workers: int, seed: int, rank: int,
                           world_size: int, shuffle: bool, drop_last: bool, **opts
                           ) -> ReferenceLoader:
    """``build_loader``'s reference backend. Options: ``prefetch_factor`` (int, default 2)."""
    unknown = sorted(set(opts) - {"prefetch_factor"})
    if unknown:
        raise TypeError(f"reference backend: unknown option(s) {', '.join(unknown)} "
                        "(known: prefetch_factor)")
    return ReferenceLoader(data, batch_size, spec, device, num_workers, seed, rank, world_size,
                           shuffle, drop_last, **opts)
