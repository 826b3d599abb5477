"""Torch files of tensors and plain data: written atomically, read with ``weights_only=True``.

Every checkpoint and weight file of the project goes through here: ``save_checkpoint``
serialises to a temporary file in the same directory, fsyncs it and renames it over the
target (a crash at any moment leaves the previous file or the new one); ``load_checkpoint``
turns every way a file can be unusable (missing, truncated, corrupt, pickled Python objects)
into one ``CheckpointError`` naming the file; ``load_state`` loads a state dict strictly,
with a readable error instead of a size-mismatch dump.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipelines.files import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """``state`` (tensors and plain data only) as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Serialise ``state`` (tensors and plain data only) and write it atomically."""
    atomic_write_bytes(path, checkpoint_bytes(state))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``; every failure becomes one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:  # a file object: torch >= 2.13 would hand a path named *.safetensors to safetensors
        with open(path, "rb") as f:
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # the pickled class, e.g. argparse.Namespace
        if not found:  # not a pickle of objects: random bytes or another format
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint "
                                  "(it does not unpickle)") from None
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects ({found.group(1)}), which are "
            f"refused for safety (weights_only=True). Convert it once, in an environment "
            "you trust: obj = torch.load(path, weights_only=False); keep only tensors and plain "
            "data (e.g. replace an argparse Namespace by vars(args)); torch.save(obj, new_path)"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, struct.error) as e:
        first = (str(e).splitlines() or ["empty message"])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def load_state(module: torch.nn.Module, state: dict, what: str, path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with a readable error instead of a size-mismatch dump."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise CheckpointError(f"checkpoint {path}: {what} does not match this model "
                              f"({' '.join(s.strip() for s in first)})") from None
