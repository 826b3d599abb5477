"""Frozen-backbone feature extraction, sharded over ranks, and feature dumps.

Each rank extracts one contiguous block of the dataset (``shard_bounds``), then the blocks are
all-gathered in row chunks (so a 1.28M x D bank never sits whole on a GPU during the gather)
and concatenated in rank order, which restores dataset order. Every rank ends with the full
``[N, D]`` float32 feature matrix on the CPU. With one process (or no process group) this is
plain extraction.

Dumps use the reference's file names (``trainfeat.pth``, ``trainlabels.pth``,
``testfeat.pth``, ``testlabels.pth``: plain tensors), so dumps made by either code base load
in the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from dino_core.formats.files import CheckpointError, save_checkpoint

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
DUMP_FILES = {("train", "features"): "trainfeat.pth", ("train", "labels"): "trainlabels.pth",
              ("val", "features"): "testfeat.pth", ("val", "labels"): "testlabels.pth"}
GATHER_ROWS = 1 << 16  # rows per all_gather call: bounds the device memory of the gather


@dataclass(frozen=True)
class FeatureSet:
    """features [N, D] float32 on the CPU, labels [N] int64, in dataset order."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.labels.shape != (self.features.shape[0],):
            raise ValueError(f"features {tuple(self.features.shape)} and labels "
                             f"{tuple(self.labels.shape)} do not describe N samples")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous block [start, stop) of n items; sizes differ by at most 1."""
    return rank * n // world_size, (rank + 1) * n // world_size


def comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor, n_total: int, world_size: int) -> torch.Tensor:
    """Concatenate every rank's ``local`` block (rank order) into [n_total, ...] on the CPU.

    Blocks are the ``shard_bounds`` of each rank; each is padded to the largest block and
    exchanged ``GATHER_ROWS`` rows at a time.
    """
    sizes = [shard_bounds(n_total, r, world_size) for r in range(world_size)]
    longest = max(stop - start for start, stop in sizes)
    dev = comm_device()
    out = local.new_empty((n_total,) + tuple(local.shape[1:]))
    for row in range(0, longest, GATHER_ROWS):
        rows = min(GATHER_ROWS, longest - row)
        piece = local.new_zeros((rows,) + tuple(local.shape[1:]))
        mine = local[row:row + rows]
        piece[: mine.shape[0]] = mine
        pieces = [torch.empty_like(piece, device=dev) for _ in range(world_size)]
        dist.all_gather(pieces, piece.to(dev))
        for r, (start, stop) in enumerate(sizes):
            take = max(0, min(rows, stop - start - row))
            out[start + row:start + row + take] = pieces[r][:take].cpu()
    return out


@torch.no_grad()
def extract_features(model: FeatureFn, dataset: Dataset, device: str | torch.device,
                     batch_size: int = 64, num_workers: int = 2) -> FeatureSet:
    """Run ``model`` (images [B, 3, H, W] -> features [B, D]) over ``dataset`` in order.

    dataset: a map-style dataset of (image tensor [3, H, W], int label).
    Under torch.distributed each rank extracts its ``shard_bounds`` block, then all ranks
    receive the whole set. Returns float32 features on the CPU.
    """
    device = torch.device(device)
    rank, world = rank_and_world()
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot extract features of an empty dataset")
    start, stop = shard_bounds(n, rank, world)
    loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, drop_last=False,
                        pin_memory=device.type == "cuda")
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, targets in loader:
        out = model(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())  # host sync: one device->CPU copy per batch
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    local_f = torch.cat(feats) if feats else None
    local_l = torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)
    if world == 1:
        assert local_f is not None
        return FeatureSet(local_f, local_l)
    dim = torch.tensor([0 if local_f is None else local_f.shape[1]], device=comm_device())
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)  # an empty shard learns D from the others
    if local_f is None:
        local_f = torch.empty(0, int(dim.item()))
    return FeatureSet(gather_rows(local_f, n, world), gather_rows(local_l, n, world))


def save_features(directory: str | Path, train: FeatureSet, val: FeatureSet) -> Path:
    """Write the four reference-named files into ``directory`` (atomically, each)."""
    directory = Path(directory)
    for split, fs in (("train", train), ("val", val)):
        save_checkpoint(fs.features.contiguous(), directory / DUMP_FILES[(split, "features")])
        save_checkpoint(fs.labels.contiguous(), directory / DUMP_FILES[(split, "labels")])
    return directory


def save_tensors(directory: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write each tensor as ``directory/<name>.pth`` (a plain tensor, atomically)."""
    directory = Path(directory)
    for name, tensor in tensors.items():
        save_checkpoint(tensor.contiguous(), directory / f"{name}.pth")
    return directory


def load_tensors(directory: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors ``directory/<name>.pth`` written by ``save_tensors``."""
    expected = ", ".join(f"{n}.pth" for n in names)
    return {n: _load_tensor(Path(directory) / f"{n}.pth", expected) for n in names}


def _load_tensor(path: Path, expected: str = ", ".join(DUMP_FILES.values())) -> torch.Tensor:
    if not path.is_file():
        raise CheckpointError(f"feature dump file missing: {path} (expected the files "
                              f"{expected} written by --dump-features)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file raises many types; name it instead
        raise CheckpointError(f"feature dump file {path} is unreadable "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def load_features(directory: str | Path) -> tuple[FeatureSet, FeatureSet]:
    """(train, val) feature sets from a dump directory."""
    directory = Path(directory)
    sets = []
    for split in ("train", "val"):
        feats = _load_tensor(directory / DUMP_FILES[(split, "features")])
        labels = _load_tensor(directory / DUMP_FILES[(split, "labels")])
        try:
            sets.append(FeatureSet(feats.float(), labels.long()))
        except (ValueError, AttributeError) as e:
            raise CheckpointError(f"feature dump in {directory}, split {split}: {e}") from None
    return sets[0], sets[1]
