"""Durable file writes: a reader sees a file's old content or its new content, never half.

Converters (shards, indexes, manifests), checkpoints and the config saved beside them all
write through here, so a crash or a full disk at any moment leaves every file whole.
"""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never half.

    A temporary file in the same directory is written, fsync'ed and renamed over ``path``;
    the directory is fsync'ed so the rename itself is durable. A failure leaves no temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (after a rename in it, to make the rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
