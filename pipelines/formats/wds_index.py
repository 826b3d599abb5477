"""WebDataset tar shards for DALI: the members of a sample and the index files.

A sample is ``<key>.jpg`` (RGB JPEG) + ``<key>.cls`` (ASCII decimal label) in a tar shard.
The index format is the one DALI's own ``wds2idx`` tool writes (version ``v1.2``): a header
line ``v1.2 <number of samples>``, then one line per sample listing, for each member of the
sample in tar order, ``<extension> <data offset> <size> <member name>``; offsets are byte
offsets of the member's data (after its 512-byte header) in the tar. Written by
``pipelines.convert.wds``, read by ``pipelines.dali_backend.readers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INDEX_VERSION = "v1.2"
IMAGE_EXT = "jpg"
LABEL_EXT = "cls"


@dataclass(frozen=True)
class IndexEntry:
    """One member of a sample in a tar shard: where its data lies."""

    ext: str
    offset: int  # byte offset of the member's data in the tar
    size: int
    name: str


def format_index(samples: list[list[IndexEntry]]) -> str:
    """The text of a DALI webdataset index for ``samples`` (members grouped per sample)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def parse_index(path: str | Path) -> list[list[IndexEntry]]:
    """Read a ``v1.2`` index file back; raises ValueError naming the file when malformed."""
    path = Path(path)
    lines = path.read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"index {path}: first line must be '{INDEX_VERSION} <count>', "
                         f"got {lines[0] if lines else '<empty file>'!r}")
    samples = []
    for no, line in enumerate(lines[1:], start=2):
        f = line.split()
        if not f or len(f) % 4:
            raise ValueError(f"index {path}, line {no}: expected groups of "
                             f"'<ext> <offset> <size> <name>', got {line!r}")
        try:
            samples.append([IndexEntry(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3])
                            for i in range(0, len(f), 4)])
        except ValueError:
            raise ValueError(f"index {path}, line {no}: offsets and sizes must be integers, "
                             f"got {line!r}") from None
    if len(samples) != int(head[1]):
        raise ValueError(f"index {path}: header says {head[1]} samples, found {len(samples)}")
    return samples
