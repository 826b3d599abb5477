"""safetensors files: recognised by their content, read and written through the optional
``safetensors`` package (the ``interop`` extra), imported only when such a file is met.

A safetensors file is an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON
(``{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``), then the raw
tensor bytes. It holds tensors only (no pickle), so reading one is safe by construction.
Written files carry ``{"format": "pt"}`` as metadata, as ``transformers`` writes and expects.
"""
from __future__ import annotations

import importlib
import os
import struct
from pathlib import Path
from types import ModuleType

import torch

from pipelines.files import atomic_write_bytes

from .files import CheckpointError

EXTRA_HINT = "pip install 'dino-fast[interop]' (or: pip install safetensors)"


def optional_module(name: str, why: str) -> ModuleType:
    """Import ``name`` (an optional dependency); missing, one CheckpointError saying what
    needed it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise CheckpointError(f"{why} needs the '{name.split('.')[0]}' package, which is not "
                              f"installed: {EXTRA_HINT}") from None


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like a safetensors file (header length that
    fits the file, then a JSON object)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= path.stat().st_size - 8 and head[8:9] == b"{"


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU; a corrupt or truncated file is one
    CheckpointError naming it."""
    st = optional_module("safetensors.torch", f"reading {path}")
    try:
        return dict(st.load_file(str(path), device="cpu"))
    except Exception as e:  # safetensors raises its own error types for every bad file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"safetensors file {path} is corrupt or truncated "
                              f"({type(e).__name__}: {first})") from None


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """``state`` serialised as a safetensors file. Tensors are made contiguous and given
    their own storage (safetensors refuses views that share memory, e.g. q/k/v slices)."""
    st = optional_module("safetensors.torch", "writing a .safetensors file")
    own = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return st.save(own, metadata={"format": "pt"})


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` as a safetensors file, atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, safetensors_bytes(state))
