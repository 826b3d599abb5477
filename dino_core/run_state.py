"""A run's checkpoint files: written verified and rotated, read back with a fallback.

OUTPUT_DIR holds ``checkpoint.pth`` (the latest: an epoch end or a point inside an epoch)
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
one. ``rng`` holds torch's CPU generator, the device's (CUDA), numpy's and Python's.
"""
from __future__ import annotations

import logging
import os
import random
import zlib
from pathlib import Path

import numpy as np
import torch

from pipelines.files import atomic_write_bytes, fsync_path

from .checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint

log = logging.getLogger("dino_core.run_state")

LAST, PREV = "checkpoint.pth", "checkpoint_prev.pth"


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


# ----------------------------------------------------------------------------- RNG
def rng_state(device: torch.device) -> dict:
    """Every generator a step may draw from (plain data and tensors only)."""
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(rng: dict, device: torch.device) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        n = rng["numpy"]
        np.random.set_state({"bit_generator": n["bit_generator"],
                             "state": {"key": n["key"].numpy().astype(np.uint32),
                                       "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})


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
