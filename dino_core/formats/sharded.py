"""Sharded checkpoints on disk: a folder of torch.distributed.checkpoint (DCP) shards plus the
run state, read safely and without a process group.

A sharded checkpoint (written by ``dino_core.train.sharded_store.ShardedStore`` under
``--parallel fsdp``) is a folder, ``OUTPUT_DIR/checkpoint.dcp/``:

- ``*.distcp``: the tensors of the entries ``student``, ``teacher`` and ``optimizer``
  (its ``state``), each rank's shards as it wrote them;
- ``.metadata``: DCP's index (every tensor's global shape, dtype and which file bytes hold
  which chunk), written by rank 0;
- ``run_state.pth`` (``RUN_STATE``): everything else of the checkpoint layout
  (``dino_core/train/checkpoint.py``) as plain data and tensors, with the RNG states of
  every rank, the CRC-32 of every shard file and a checksum of itself.

DCP stores each tensor once, by its global name (``teacher.backbone.blocks.0.attn.qkv.weight``),
whatever the world size that wrote it; a reader asks for tensors of any sharding (a
DTensor of another world size, or a whole plain tensor here) and DCP reads the chunks that
overlap. That is what lets a checkpoint written by 2 ranks resume on 1 and back, and
``dino-export`` take the teacher from it as plain tensors (``read_entry``).

DCP's index is a Python pickle. ``SafeReader`` reads it with an unpickler that accepts only
the classes an index is made of (DCP's metadata records, torch dtypes and sizes, paths):
anything else is refused with a ``CheckpointError``, as ``weights_only=True`` refuses it in
a torch file. Tensors themselves are read by DCP with ``weights_only=True``; this project
never stores non-tensor objects in the shards (they go to ``run_state.pth``), so DCP's
object reader (which would unpickle freely) is never used.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from .files import CheckpointError, load_checkpoint

RUN_STATE = "run_state.pth"
METADATA = ".metadata"
# The entries whose tensors are stored as DCP shards; the rest of the layout is run state.
SHARDED_ENTRIES = ("student", "teacher", "optimizer")

_INDEX_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _IndexUnpickler(pickle.Unpickler):
    """Builds only the classes of a DCP index (see ``_INDEX_CLASSES``) and torch dtypes."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if name in _INDEX_CLASSES.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise CheckpointError(f"sharded checkpoint index {self.source} holds {module}.{name}, "
                              "which is not part of a DCP index; refused for safety")


class SafeReader(FileSystemReader):
    """DCP's file reader with its index read by ``_IndexUnpickler`` (the module docstring)."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / METADATA
        try:
            with open(path, "rb") as f:
                metadata = _IndexUnpickler(f, str(path)).load()
        except CheckpointError:
            raise
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError,
                TypeError, IndexError) as e:
            raise CheckpointError(f"sharded checkpoint index {path} is missing or corrupt "
                                  f"({type(e).__name__}: {e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"sharded checkpoint index {path} holds a "
                                  f"{type(metadata).__name__}, not a DCP index")
        # FileSystemReader.read_metadata also fills these in; the loader reads them
        from torch.distributed.checkpoint.metadata import StorageMeta
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


@contextlib.contextmanager
def single_process_quiet():
    """DCP warns at every save or load without a process group, which is meant here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (it holds a DCP index)."""
    return (Path(path) / METADATA).is_file()


def read_run_state(folder: str | os.PathLike, map_location="cpu") -> dict:
    """The run state of a sharded checkpoint (``weights_only`` read; not verified here:
    ``train.sharded_store`` verifies it when resuming)."""
    return load_checkpoint(Path(folder) / RUN_STATE, map_location=map_location)


def read_entry(folder: str | os.PathLike, key: str) -> dict[str, torch.Tensor]:
    """Every tensor of entry ``key`` (``teacher``, ``student``) as whole plain CPU tensors,
    by name without the entry (``backbone.blocks.0.norm1.weight``), gathered from the
    shards of whatever world size wrote them; no process group needed."""
    folder = Path(folder)
    reader = SafeReader(folder)
    target = {name: torch.empty(md.size, dtype=md.properties.dtype)
              for name, md in stored_tensors(folder, key, reader).items()}
    if not target:
        raise CheckpointError(f"sharded checkpoint {folder} has no {key!r} entry")
    load_into(folder, {key: target}, distributed=False, reader=reader)
    return target


def stored_tensors(folder: str | os.PathLike, key: str, reader: SafeReader | None = None
                   ) -> dict[str, TensorStorageMetadata]:
    """The tensors of entry ``key`` in the index of ``folder``, by name without the entry
    (``state.backbone.norm.weight.exp_avg`` for ``optimizer``): global shape and dtype."""
    metadata = (reader or SafeReader(folder)).read_metadata()
    prefix = f"{key}."
    return {name[len(prefix):]: md for name, md in metadata.state_dict_metadata.items()
            if name.startswith(prefix) and isinstance(md, TensorStorageMetadata)}


def load_into(folder: str | os.PathLike, target: dict, *, distributed: bool,
              reader: SafeReader | None = None) -> None:
    """Fill ``target``'s tensors (a nested dict of plain tensors or DTensors of any
    sharding) in place from the shards in ``folder``; a missing entry, a shape that does not
    match or an unreadable shard is one ``CheckpointError`` naming the folder.
    ``distributed``: every rank of the default process group calls it (DCP plans the reads
    together); False: this process alone."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException

    try:
        with single_process_quiet():
            dcp.load(target, storage_reader=reader or SafeReader(folder),
                     no_dist=not distributed)
    except CheckpointError:
        raise
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"sharded checkpoint {folder} does not load into this run: "
                              f"{first[:300]}") from None
