"""One factory for every backend, ``build_loader(data, backend=...)``, and the one loader
every backend is wrapped in, ``MultiCropLoader``.

The contract, whatever the backend::

    loader = build_loader(data, backend="dali", batch_size=64, ...)
    len(loader)                        # batches per epoch on this rank, the same on every rank
    loader.set_epoch(e)                # before each epoch: new order, augmentation streams
    for batch in loader:               # pipelines.batch.Batch
        batch.views, batch.labels, batch.sample_ids, batch.masks

``batch.views`` is a list of ``spec.num_views`` tensors, the global views ``[B, 3, G, G]``
first and then the local views ``[B, 3, L, L]``, already normalised, on ``device``;
``batch.labels`` is int64 ``[B]`` on ``device``; ``batch.sample_ids`` is int64 ``[B]`` on the
CPU (bookkeeping: reading it costs no device sync), the dataset indices of the rows in epoch
order, the same for every backend (``pipelines.order``). ``batch.masks`` is None unless the
spec has a ``masking`` section: then bool ``[num_global * B, rows, cols]`` on the CPU.

What the wrapper owns, so that no backend restates it:

- the batch count: ``EpochPlan.batches_per_epoch`` (``drop_last`` drops the incomplete last
  batch, else it is smaller); a dataset that gives no batch is refused when built.
- the first batch: ``set_epoch(e, first_batch=k)`` (0 <= k <= len) starts that epoch's next
  iteration at its batch k, a mid-epoch resume: the epoch order is a pure function of
  (seed, epoch) and every sample's views come from its own counter stream, so batches k..
  equal those of a whole epoch, and the earlier samples are not read.
- the order: every batch's sample ids are checked against the plan's (a host compare of B
  integers), so a backend that read other samples fails at once instead of silently
  training on a different sequence; an epoch that ends early or runs long is an error.
- the masks (``spec.masking``): drawn here, after the backend's views, from the batch's own
  counter stream (seed, rank, epoch, batch index: ``pipelines.sampling.masks``), so every
  backend and a resumed epoch give the same masks for the same batch. On the host, in this
  process: about a millisecond per 16 masked crops of a 16 x 16 grid.

A backend (``Backend``) opens the data, asks ``plan_for(num_samples)`` for its ``EpochPlan``
and yields ``(views, labels, sample_ids)`` from any batch of any epoch; backend-specific
state (skipped files, decode counts, the DALI pipeline) stays on ``loader.backend``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from .batch import Batch
from .folder import DatasetError
from .order import EpochPlan, PlanFor
from .sampling.masks import draw_batch_masks
from .spec import AugmentationSpec

# backend name -> "module:function"; each function takes (data, spec, device, num_workers,
# plan_for, **backend_options) and returns a Backend. The one list of backend names.
BACKENDS = {
    "reference": "pipelines.reference_backend.loader:build_reference_loader",
    "dali": "pipelines.dali_backend.loader:build_dali_loader",
    "ffcv": "pipelines.ffcv_backend.loader:build_ffcv_loader",
}
_EXTRAS = {"dali": "pip install 'dino-fast[dali]'", "ffcv": "pip install 'dino-fast[ffcv]'"}

BackendBatch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]  # views, labels, ids


class Backend(Protocol):
    """What a backend gives the wrapper."""

    classes: list[str]
    plan: EpochPlan

    def batches(self, epoch: int, first_batch: int) -> Iterator[BackendBatch]:
        """Batches ``first_batch`` .. ``plan.batches_per_epoch - 1`` of ``epoch``: views and
        labels on the device, sample ids int64 [B] on the CPU. Closing the generator early
        (an abandoned epoch) must leave the backend ready for the next call."""
        ...

    def close(self) -> None: ...


class MultiCropLoader:
    """The loader every backend returns (see the module docstring for the contract)."""

    def __init__(self, backend: Backend, data: str | Path, name: str,
                 spec: AugmentationSpec | None = None) -> None:
        self.backend, self.name = backend, name
        self.spec = spec  # read for its masking section only (the backend has the views')
        self.plan: EpochPlan = backend.plan
        self.classes: list[str] = backend.classes
        self.num_samples = self.plan.num_samples  # samples in the whole dataset (all ranks)
        self.epoch, self.first_batch = 0, 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, this rank's order)
        if len(self) == 0:
            backend.close()
            p = self.plan
            raise DatasetError(
                f"{data}: {p.num_samples} images give {p.samples_per_rank} per rank (world "
                f"size {p.world_size}), fewer than one batch of {p.batch_size}; lower the "
                "batch size or pass drop_last=False")

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.plan.batches_per_epoch

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Select the epoch's order and augmentation streams; call before iterating. The
        next iteration yields batches ``first_batch`` .. ``len(self) - 1`` of the epoch (a
        mid-epoch resume), skipping the earlier ones without reading them."""
        if not 0 <= first_batch <= len(self):
            raise ValueError(f"first_batch {first_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.first_batch = int(epoch), int(first_batch)

    def __iter__(self) -> Iterator[Batch]:
        epoch, t = self.epoch, self.first_batch
        with contextlib.closing(self.backend.batches(epoch, t)) as batches:
            for views, labels, ids in batches:
                if t >= len(self):
                    raise RuntimeError(f"the {self.name} backend yielded more than the "
                                       f"{len(self)} batches of epoch {epoch}")
                self._check_ids(epoch, t, ids)
                yield Batch(views, labels, ids, self._masks(epoch, t, len(ids)))
                t += 1
        if t != len(self):
            raise RuntimeError(f"the {self.name} backend ended epoch {epoch} after {t} of "
                               f"{len(self)} batches")

    def _check_ids(self, epoch: int, t: int, ids: torch.Tensor) -> None:
        """Batch ``t``'s sample ids (CPU) must be the plan's: a host compare, no device sync."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.plan.order(epoch))
        b = self.plan.batch_size
        want = self._order[1][t * b:(t + 1) * b]
        if ids.device.type != "cpu" or not np.array_equal(ids.numpy(), want):
            raise RuntimeError(f"the {self.name} backend's batch {t} of epoch {epoch} holds "
                               f"samples {ids.tolist()[:8]}..., the epoch order says "
                               f"{want.tolist()[:8]}...")

    def _masks(self, epoch: int, t: int, batch_size: int) -> torch.Tensor | None:
        """Batch ``t``'s masks (None without a masking section), drawn on the host."""
        if self.spec is None or self.spec.masking is None:
            return None
        p = self.plan
        return draw_batch_masks(self.spec, p.seed, p.rank, epoch, t, batch_size)

    def close(self) -> None:
        """Release the backend's workers, pipelines and buffers; iterating again later
        starts them again."""
        self.backend.close()

    def __enter__(self) -> "MultiCropLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_loader(data: str | Path, backend: str = "reference", batch_size: int = 64,
                 spec: AugmentationSpec | None = None, device: str | torch.device = "cpu",
                 num_workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, order: str | None = None,
                 block: int = 256, window: int = 8, **backend_options) -> MultiCropLoader:
    """Build the multi-crop loader of ``backend`` over ``data``.

    data: an ImageFolder tree, or a converted dataset (``.beton`` for ffcv, a shard folder
        with ``manifest.json`` for dali).
    rank / world_size: GLOBAL rank and world size; each rank reads its share of the epoch
        order and draws augmentations from streams seeded by (seed, rank, epoch, sample).
    drop_last: drop the incomplete last batch (True for training); with False the last
        batch may be smaller.
    order: the epoch order's mode (``pipelines.order.MODES``); None: "random" when
        ``shuffle``, else "sequential". block, window: "quasi_random"'s sizes.
    backend_options: backend-specific keywords (documented by each backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    plan_for: PlanFor = functools.partial(
        EpochPlan, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        mode=order or ("random" if shuffle else "sequential"), drop_last=drop_last,
        block=block, window=window)
    plan_for(1)  # the plan's own checks (batch size, rank, order) before opening the data
    module_name, fn_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = _EXTRAS.get(backend, "")
        raise ImportError(f"backend {backend!r} is not available: {e}. {hint}".strip()) from e
    spec = spec or AugmentationSpec()
    source = getattr(module, fn_name)(data=data, spec=spec, device=device,
                                      num_workers=num_workers, plan_for=plan_for,
                                      **backend_options)
    return MultiCropLoader(source, data, backend, spec)
