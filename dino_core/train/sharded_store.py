"""Sharded checkpoints (``--parallel fsdp``): every rank writes its own shards through
torch.distributed.checkpoint (DCP), the run state beside them, rotated as whole folders.

OUTPUT_DIR holds ``checkpoint.dcp/`` (the latest: an epoch end or a point inside an epoch),
``checkpoint_prev.dcp/`` (the one before it) and, with ``saveckp_freq``,
``checkpointNNNN.dcp/`` (hard links to the files of that epoch's checkpoint). A folder's
files are described in ``dino_core/formats/sharded.py``; its content is the checkpoint
layout of ``train/checkpoint.py``, with the entries ``student``, ``teacher`` and the
optimizer's ``state`` stored as shards (DTensor state dicts: no rank ever gathers a whole
model) and every other entry, plain, in ``run_state.pth``.

Save (every rank calls ``save``): every rank builds the state, writes its shards into
``.checkpoint.dcp.new/`` (rank 0 also DCP's index), then the CRC-32 of its share of the
folder's files (file i of the sorted list when i % world == rank: the reading is spread
over the ranks); the shares and every rank's RNG states are gathered on rank 0, which
writes ``run_state.pth`` (with its own checksum, read back before anything is renamed) and
rotates: ``checkpoint_prev.dcp`` -> ``.checkpoint_prev.dcp.old``, ``checkpoint.dcp`` ->
``checkpoint_prev.dcp``, the new folder -> ``checkpoint.dcp``, fsync, the old one deleted.
A crash at any moment leaves a complete latest or previous folder, never a half-written one
under either name (between the two renames only ``checkpoint_prev.dcp`` exists, and is used).

Resume (every rank): the latest folder, else the previous one. ``run_state.pth`` is read
and its checksum verified, every shard file's CRC checked (each rank its share), and the
ranks agree (one all-reduce) so that all of them resume from the same folder or all refuse
it. The sharded entries come back as ``ShardedEntry``: their tensors stay on disk until the
strategy loads them in place into its own sharded modules and optimizer, at this run's
world size (``ShardedEntry.load_into``): a checkpoint of 2 ranks resumes on 1 and back.
Each rank takes the RNG states of rank ``rank % saved world size``.
"""
from __future__ import annotations

import logging
import os
import shutil
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from pipelines.files import fsync_path

from ..formats.files import CheckpointError
from ..formats.sharded import (METADATA, RUN_STATE, SHARDED_ENTRIES, is_sharded_checkpoint,
                               load_into, single_process_quiet, stored_tensors)
from .store import LAST as SINGLE_FILE, SHARDED, load_verified, write_verified

log = logging.getLogger("dino_core.train.store")

LAST, PREV = SHARDED, "checkpoint_prev.dcp"
NEW, OLD = f".{LAST}.new", f".{PREV}.old"
_CHUNK = 1 << 24


# ----------------------------------------------------------------------------- the state
def split_tensors(tree: Any) -> tuple[Any, Any]:
    """(the tensors of a nested dict, the rest), each a nested dict of the same keys (None
    when empty): what goes to the shards and what to the run state. Lists (the optimizer's
    param_groups) are plain data and must hold no tensor."""
    if isinstance(tree, torch.Tensor):
        return tree, None
    if isinstance(tree, dict):
        tensors, plain = {}, {}
        for k, v in tree.items():
            t, p = split_tensors(v)
            if t is not None:
                tensors[k] = t
            if p is not None:
                plain[k] = p
        return tensors or None, plain or None
    if isinstance(tree, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in tree):
        raise ValueError("a sharded checkpoint entry holds tensors inside a list")
    return None, tree


@dataclass(frozen=True)
class ShardedEntry:
    """A checkpoint entry whose tensors are still in the shards of ``folder``, under ``key``;
    ``plain`` its non-tensor part (the optimizer's ``param_groups``); ``prefix`` what the
    stored names have in front of the names the loader asks for (the student's
    ``module.``)."""

    folder: Path
    key: str
    plain: dict = field(default_factory=dict)
    prefix: str = ""

    def with_prefix(self, prefix: str) -> "ShardedEntry":
        return replace(self, prefix=prefix)

    def names(self) -> set[str]:
        """The stored tensor names of this entry, without ``prefix`` (nested keys joined
        by dots: ``state.blocks.0.norm1.weight.exp_avg``)."""
        return {name.removeprefix(self.prefix) for name in stored_tensors(self.folder, self.key)}

    def load_into(self, target: dict) -> None:
        """Fill ``target`` (name -> tensor or DTensor, or nested dicts of them) in place; every
        rank calls it together."""
        import torch.distributed as dist
        named = {self.prefix + k: v for k, v in target.items()}
        load_into(self.folder, {self.key: named}, distributed=dist.is_initialized())


# ----------------------------------------------------------------------------- files
def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def folder_files(folder: Path) -> list[str]:
    """The folder's DCP files (shards and index), sorted: what the CRC table covers."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".distcp")) + [METADATA]


def publish(new: Path, out: Path) -> None:
    """Rotate: the latest folder becomes the previous one, ``new`` the latest (rank 0)."""
    last, prev, old = out / LAST, out / PREV, out / OLD
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():  # else a crash left only the previous one: it stays the previous
        if prev.exists():
            os.replace(prev, old)
        os.replace(last, prev)
    os.replace(new, last)
    fsync_path(out)
    shutil.rmtree(old, ignore_errors=True)


def keep_copy(folder: Path, kept: Path) -> None:
    """``kept``: the files of ``folder`` hard-linked (no copy; files are never rewritten)."""
    tmp = kept.with_name(f".{kept.name}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in folder.iterdir():
        os.link(f, tmp / f.name)
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(tmp, kept)
    fsync_path(kept.parent)


# ----------------------------------------------------------------------------- the store
@dataclass
class ShardedStore:
    """The sharded ``CheckpointStore`` (the module docstring). ``agree(ok)``: True on every
    rank when ``ok`` is True on every rank (an all-reduce); ``gather(obj)``: every rank's
    ``obj`` as a list on rank 0 (None elsewhere)."""

    out: Path
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)
    agree: Callable[[bool], bool] = field(default=lambda ok: ok)
    gather: Callable[[Any], list | None] = field(default=lambda obj: [obj])

    def exists(self) -> bool:
        if any((self.out / n).is_dir() for n in (LAST, PREV)):
            return True
        if (self.out / SINGLE_FILE).exists():
            raise CheckpointError(
                f"{self.out} holds {SINGLE_FILE}, a checkpoint of --parallel ddp; resume it "
                "with --parallel ddp, or use another --output-dir")
        return False

    def save(self, make_state: Callable[[], dict], keep_epoch: int | None = None) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter

        state = make_state()
        shards, plain = {}, {k: v for k, v in state.items() if k not in SHARDED_ENTRIES}
        for key in SHARDED_ENTRIES:
            tensors, rest = split_tensors(state[key])
            shards[key] = tensors or {}
            if rest is not None:
                plain[key] = rest
        rng = plain.pop("rng")
        new = self.out / NEW
        if self.rank == 0:
            shutil.rmtree(new, ignore_errors=True)  # left by a process killed while saving
            new.mkdir(parents=True)
        self.barrier()
        # returns on every rank once rank 0 has written the index
        with single_process_quiet():
            dcp.save(shards, storage_writer=FileSystemWriter(new),
                     no_dist=not dist.is_initialized())
        files = folder_files(new)
        mine = {name: file_crc(new / name) for name in files[self.rank::self.world_size]}
        gathered = self.gather((rng, mine))
        if self.rank == 0:
            crcs = {name: crc for _, share in gathered for name, crc in share.items()}
            run_state = {**plain, "rng_ranks": [r for r, _ in gathered], "shards": crcs}
            write_verified(run_state, new / RUN_STATE)  # read back before any rename
            publish(new, self.out)
            if keep_epoch is not None:
                keep_copy(self.out / LAST, self.out / f"checkpoint{keep_epoch:04d}.dcp")
        self.barrier()

    def load_latest(self, map_location) -> tuple[dict, Path] | None:
        errors: list[str] = []
        for folder in (self.out / LAST, self.out / PREV):
            if not folder.is_dir():  # the same answer on every rank (a shared file system)
                continue
            ckpt, error = self._read(folder)
            if self.agree(error is None):
                return ckpt, folder
            error = error or f"sharded checkpoint {folder} was refused by another rank"
            log.error("%s; trying the previous checkpoint", error)
            errors.append(error)
        if errors:
            raise CheckpointError(f"{errors[0]} (and no good previous checkpoint in {self.out})")
        return None

    def load(self, path: Path, map_location) -> dict:
        path = Path(path)
        if not is_sharded_checkpoint(path):
            raise CheckpointError(
                f"{path} is not a sharded checkpoint (a folder with {METADATA}); --parallel "
                f"fsdp resumes from OUTPUT_DIR/{LAST}, a {SINGLE_FILE} with --parallel ddp")
        ckpt, error = self._read(path)
        if not self.agree(error is None):
            raise CheckpointError(error or f"sharded checkpoint {path} was refused by another rank")
        return ckpt

    def _read(self, folder: Path) -> tuple[dict | None, str | None]:
        """(the checkpoint of ``folder`` with its sharded entries still on disk, None), or
        (None, why it is refused): run state checksum, file list, this rank's CRC share."""
        try:
            run_state = load_verified(folder / RUN_STATE, "cpu")
            crcs, ranks = run_state.pop("shards"), run_state.pop("rng_ranks")
            files = folder_files(folder)
            if set(crcs) != set(files):
                raise CheckpointError(f"sharded checkpoint {folder} has files "
                                      f"{sorted(set(files) ^ set(crcs))[:3]} that its run "
                                      "state does not list, or lacks them")
            for name in files[self.rank::self.world_size]:
                if file_crc(folder / name) != crcs[name]:
                    raise CheckpointError(f"sharded checkpoint {folder}: {name} is corrupt (its "
                                          "CRC does not match the run state's)")
        except CheckpointError as e:
            return None, str(e)
        except OSError as e:
            return None, f"sharded checkpoint {folder} cannot be read ({e})"
        ckpt = {**run_state, "rng": ranks[self.rank % len(ranks)]}
        for key in SHARDED_ENTRIES:
            ckpt[key] = ShardedEntry(folder, key, run_state.get(key) or {})
        return ckpt, None
