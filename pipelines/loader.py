"""One factory for every backend: ``build_loader(data, backend=...)``.

Every backend returns an object honouring the ``MultiCropLoader`` contract: iterating yields
``(views, labels)`` where ``views`` is a list of ``spec.num_views`` tensors, the global views
``[B, 3, G, G]`` first and then the local views ``[B, 3, L, L]``, already normalised, on
``device``; ``labels`` is an int64 tensor ``[B]``. ``len(loader)`` is the number of batches one
epoch yields on this rank (identical on every rank), and ``set_epoch(e)`` must be called
before each epoch: it reshuffles the whole dataset and moves the augmentation streams on.
``set_epoch(e, first_batch=k)`` starts that epoch's next iteration at its batch k (a
mid-epoch resume): the epoch order is a pure function of (seed, epoch) and every sample's
views come from its own counter stream, so batches k.. equal those of a whole epoch, and the
earlier samples are not read.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import torch

from .spec import AugmentationSpec

# backend name -> "module:function"; each function takes the arguments of build_loader.
BACKENDS = {
    "reference": "pipelines.reference_loader:build_reference_loader",
    "dali": "pipelines.dali_backend.loader:build_dali_loader",
    "ffcv": "pipelines.ffcv_backend.loader:build_ffcv_loader",
}


@runtime_checkable
class MultiCropLoader(Protocol):
    classes: list[str]
    num_samples: int  # samples in the whole dataset (all ranks)

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]: ...
    def set_epoch(self, epoch: int, first_batch: int = 0) -> None: ...
    def close(self) -> None: ...


def build_loader(data: str | Path, backend: str = "reference", batch_size: int = 64,
                 spec: AugmentationSpec | None = None, device: str | torch.device = "cpu",
                 num_workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, **backend_options
                 ) -> MultiCropLoader:
    """Build the multi-crop loader of ``backend`` over ``data``.

    data: an ImageFolder tree, or a converted dataset (``.beton`` for ffcv, a shard folder
        with ``manifest.json`` for dali).
    rank / world_size: GLOBAL rank and world size; each rank reads a disjoint shard and
        draws augmentations from streams seeded by (seed, rank, epoch, sample).
    drop_last: drop the incomplete last batch (True for training); with False the last
        batch may be smaller.
    backend_options: backend-specific keywords (documented by each backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    module_name, fn_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = {"dali": "pip install 'dino-fast[dali]'", "ffcv": "pip install 'dino-fast[ffcv]'"}
        hint = extra.get(backend, "")
        raise ImportError(f"backend {backend!r} is not available: {e}. {hint}".strip()) from e
    return getattr(module, fn_name)(
        data=data, batch_size=batch_size, spec=spec or AugmentationSpec(), device=device,
        num_workers=num_workers, seed=seed, rank=rank, world_size=world_size,
        shuffle=shuffle, drop_last=drop_last, **backend_options)
