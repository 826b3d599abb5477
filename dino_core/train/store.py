"""Where a run's checkpoints live: the store protocol and today's store, one file rotated.

The training loop saves and resumes through a ``CheckpointStore``, which the parallel
strategy chooses (``ParallelStrategy.checkpoint_store``): every rank calls ``save`` and
``load_latest``; the store decides which ranks build and write the state. A sharded store
(every rank its own shards, torch.distributed.checkpoint) is another implementation of the
same protocol, with no change to the loop (``sharded_store.py``, ``--parallel fsdp``).

``SingleFileStore`` (DDP and one process): rank 0 builds the whole state and writes one
file; every rank reads the whole file. OUTPUT_DIR holds ``checkpoint.pth`` (the latest: an epoch end or a point inside an epoch)
and ``checkpoint_prev.pth`` (the one before it). A new checkpoint is serialised, written to
a temporary file, fsync'ed and read back (its bytes must equal what was serialised); only
then does the current latest become ``checkpoint_prev.pth`` (a hard link, so
``checkpoint.pth`` never goes missing) and the new file replace ``checkpoint.pth``. A crash
at any moment leaves at least one good checkpoint, never a half-written one under either
name.

Every checkpoint carries a CRC-32 of its tensors and plain data (``checksum``): torch does
not verify the stored bytes when loading, so flipped bits would otherwise load silently.
On resume, a file that is truncated, corrupt or fails its checksum is refused with one log
line and ``checkpoint_prev.pth`` is used.

The data position: ``epoch`` epochs finished plus ``epoch_batches`` batches of the next one
consumed. Every backend's epoch order is a pure function of (seed, epoch) and every
sample's views come from its own counter stream, so the loader restarts the epoch at that
batch (``set_epoch(epoch, first_batch=...)``) and the rest of the run is the uninterrupted
one. ``rng`` holds every generator's state (``rng.py``).
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from pipelines.files import atomic_write_bytes, fsync_path

from ..formats.files import CheckpointError, checkpoint_bytes, load_checkpoint

log = logging.getLogger("dino_core.train.store")

LAST, PREV = "checkpoint.pth", "checkpoint_prev.pth"
SHARDED = "checkpoint.dcp"  # the sharded store's latest (sharded_store.py): another kind of run


# ----------------------------------------------------------------------------- checksum
def _crc(obj, crc: int) -> int:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"{t.dtype}{tuple(obj.shape)}".encode(), crc)
        return zlib.crc32(t.view(torch.uint8).numpy().tobytes(), crc) if t.numel() else crc
    if isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            crc = _crc(obj[key], zlib.crc32(repr(key).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for item in obj:
            crc = _crc(item, crc)
        return zlib.crc32(f"{type(obj).__name__}{len(obj)}".encode(), crc)
    return zlib.crc32(repr(obj).encode(), crc)


def checksum(state: dict) -> int:
    """CRC-32 of every tensor's bytes, dtype and shape and of the plain data (not ``checksum``)."""
    return _crc({k: v for k, v in state.items() if k != "checksum"}, 0)


def verify(ckpt: dict, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose content does not match its stored checksum (files without
    one, e.g. written before it existed, are accepted)."""
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its "
                              "checksum")


# ----------------------------------------------------------------------------- files
def write_verified(state: dict, path: Path) -> None:
    """Serialise ``state`` (with its checksum) to ``path`` atomically and read the written
    bytes back; a file that reads back differently is removed and an OSError raised."""
    data = checkpoint_bytes({**state, "checksum": checksum(state)})
    atomic_write_bytes(path, data)
    if zlib.crc32(path.read_bytes()) != zlib.crc32(data):
        path.unlink()
        raise OSError(f"checkpoint {path} reads back different bytes than were written")


def save_latest(state: dict, out: Path) -> None:
    """Write ``state`` as OUTPUT_DIR/checkpoint.pth; the previous one becomes
    checkpoint_prev.pth."""
    last, prev = out / LAST, out / PREV
    new = out / f".{LAST}.new{os.getpid()}"
    write_verified(state, new)  # verified before anything is renamed
    if last.exists():
        link = out / f".{PREV}.link{os.getpid()}"
        if link.exists():
            link.unlink()
        os.link(last, link)
        os.replace(link, prev)  # checkpoint.pth stays in place meanwhile
    os.replace(new, last)
    fsync_path(out)
    for stale in (*out.glob(f".{LAST}.new*"), *out.glob(f".{PREV}.link*")):
        stale.unlink(missing_ok=True)  # left by a process killed while saving


def load_verified(path: Path, map_location) -> dict:
    ckpt = load_checkpoint(path, map_location=map_location)
    verify(ckpt, path)
    return ckpt


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint to resume from (good or not: ``load_latest`` then
    either resumes from one or refuses both with an error, never starts afresh)."""
    return any((out / name).exists() for name in (LAST, PREV))


def load_latest(out: Path, map_location) -> tuple[dict, Path] | None:
    """The newest good checkpoint of OUTPUT_DIR (latest, else previous), or None if there is
    none. A refused file is logged in one line; if every file present is refused, the
    error of the latest is raised."""
    errors: list[CheckpointError] = []
    for path in (out / LAST, out / PREV):
        if not path.is_file():
            continue
        try:
            return load_verified(path, map_location), path
        except CheckpointError as e:
            log.error("%s; trying the previous checkpoint", e)
            errors.append(e)
    if errors:
        raise CheckpointError(f"{errors[0]} (and no good previous checkpoint in {out})")
    return None


# ----------------------------------------------------------------------------- stores
class CheckpointStore(Protocol):
    """Saves and finds a run's checkpoints; every rank calls every method."""

    def exists(self) -> bool:
        """Whether there is a checkpoint to resume from (good or not)."""

    def save(self, make_state: Callable[[], dict], keep_epoch: int | None = None) -> None:
        """Save ``make_state()`` as the latest checkpoint (the store decides on which ranks
        it is called); with ``keep_epoch``, also keep it as that epoch's checkpoint. Returns
        on every rank once the checkpoint is complete."""

    def load_latest(self, map_location) -> tuple[dict, Path] | None:
        """The newest good checkpoint and where it is, or None when there is none."""

    def load(self, path: Path, map_location) -> dict:
        """The checkpoint at ``path`` (``--resume``), verified."""


@dataclass
class SingleFileStore:
    """One verified file per checkpoint in ``out``, rotated (the module docstring): the
    ``writer`` rank builds and writes it, then every rank meets at ``barrier``."""

    out: Path
    writer: bool = True
    barrier: Callable[[], None] = field(default=lambda: None)

    def exists(self) -> bool:
        if not has_checkpoint(self.out) and (self.out / SHARDED).is_dir():
            raise CheckpointError(f"{self.out} holds {SHARDED}/, a checkpoint of --parallel "
                                  "fsdp; resume it with --parallel fsdp, or use another "
                                  "--output-dir")
        return has_checkpoint(self.out)

    def save(self, make_state: Callable[[], dict], keep_epoch: int | None = None) -> None:
        if self.writer:
            state = make_state()
            save_latest(state, self.out)
            if keep_epoch is not None:
                write_verified(state, self.out / f"checkpoint{keep_epoch:04d}.pth")
        self.barrier()

    def load_latest(self, map_location) -> tuple[dict, Path] | None:
        return load_latest(self.out, map_location)

    def load(self, path: Path, map_location) -> dict:
        if Path(path).is_dir():
            raise CheckpointError(f"{path} is a folder (a sharded checkpoint of --parallel "
                                  "fsdp?); --parallel ddp resumes from a checkpoint file")
        return load_verified(Path(path), map_location)
