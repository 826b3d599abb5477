"""Webdataset tar shards that users already have (written by img2dataset, webdataset's
``ShardWriter`` / ``TarWriter``, or any tar tool), read by the DALI executor in place.

A folder of ``*.tar`` files without this project's ``manifest.json``. Samples follow the
webdataset convention: consecutive members sharing a key (the member path up to the first
"." of its file name) form one sample; the rest of the name is the member's extension
(compared in lower case). Per sample:
- image: the first ``jpg`` / ``jpeg`` / ``png`` member (DALI decodes them; the feed reads
  the size from the JPEG header, else PIL); a sample without one is skipped, and counted;
- label: ``cls`` (ASCII decimal), else ``json`` with an integer ``label`` or ``cls`` entry,
  else none: -1 (unlabelled, as a ``dino-convert`` of an unlabelled folder).
The class count is max label + 1 (class names are the label numbers); one log line says
what was found.

Index files: a shard's members are located once by reading its tar headers and stored as
DALI's webdataset index (``formats.wds_index``, the ``wds2idx`` format), ``<shard>.idx``
next to the shard, or, when the folder is not writable, in a cache folder
(``$DINO_INDEX_CACHE``, else ``~/.cache/dino-fast/wds-index``, one subfolder per data
folder). An index is used again while it is newer than its shard and reaches no further
than the shard's end. Indexing shows a progress bar on a terminal (a step per shard).

A tar that is cut short or is not a tar is one ``DatasetError`` naming it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from ..folder import DatasetError
from ..formats.wds_index import IndexEntry, format_index, parse_index
from .readers import ShardDataset

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png")
SHARD_FORMAT = ("webdataset shards: KEY.jpg / KEY.jpeg / KEY.png, with KEY.cls or KEY.json "
                "labels or none")


def split_name(name: str) -> tuple[str, str]:
    """Member name -> (sample key, extension), webdataset's rule: the key ends at the first
    "." of the file name (a folder part may hold dots)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def scan_tar(tar: Path) -> list[list[IndexEntry]]:
    """The members of ``tar`` (regular files), grouped into samples by key, in tar order."""
    size = tar.stat().st_size
    samples: list[list[IndexEntry]] = []
    last_key = None
    try:
        with tarfile.open(tar, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"member {member.name} runs past the end")
                key, ext = split_name(member.name)
                entry = IndexEntry(ext or "-", member.offset_data, member.size,
                                   member.name.replace(" ", "_"))
                if key != last_key:
                    samples.append([])
                    last_key = key
                samples[-1].append(entry)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{tar} is not a complete tar file ({e}); expected "
                           f"{SHARD_FORMAT}") from None
    return samples


def cache_root() -> Path:
    """Where indexes of read-only data folders go."""
    env = os.environ.get("DINO_INDEX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dino-fast" / "wds-index"


def writable(folder: Path) -> bool:
    """Whether an index file can be created in ``folder`` (tried, not guessed: a read-only
    mount or another owner's folder says so only when written to)."""
    probe = folder / f".dino-index-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def index_folder(root: Path) -> Path:
    """The folder holding the shards' index files: ``root`` itself when writable, else a
    cache folder of its own."""
    if writable(root):
        return root
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    folder = cache_root() / f"{root.name}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fresh_index(tar: Path, idx: Path) -> list[list[IndexEntry]] | None:
    """The index at ``idx`` when it is usable for ``tar`` (newer, within its size)."""
    if not idx.is_file() or idx.stat().st_mtime < tar.stat().st_mtime:
        return None
    try:
        samples = parse_index(idx)
    except (OSError, ValueError):
        return None  # written again below
    size = tar.stat().st_size
    if any(m.offset + m.size > size for members in samples for m in members):
        raise DatasetError(f"{tar} is shorter than its index {idx} says: cut short or replaced "
                           "after indexing (remove the .idx to index it again)")
    return samples


def load_indexes(root: Path, tars: list[Path]) -> list[list[list[IndexEntry]]]:
    """Every shard's samples, from its index file, written first where missing or stale."""
    folder = index_folder(root)
    found = [_fresh_index(tar, folder / f"{tar.stem}.idx") for tar in tars]
    missing = [k for k, f in enumerate(found) if f is None]
    if missing:
        from tqdm import tqdm
        where = "next to the shards" if folder == root else f"in {folder}"
        log.info("%s: indexing %d of %d shards once (%s)", root, len(missing), len(tars), where)
        for k in tqdm(missing, desc="indexing shards", unit="shard", file=sys.stderr,
                      dynamic_ncols=True, disable=None):  # None: shown on a terminal only
            found[k] = scan_tar(tars[k])
            atomic_write_bytes(folder / f"{tars[k].stem}.idx", format_index(found[k]).encode())
    return found


def sample_label(members: list[IndexEntry], data: mmap.mmap, tar: Path) -> int:
    """A sample's label from its ``cls`` or ``json`` member; -1 without one."""
    by_ext = {m.ext: m for m in members}
    member = by_ext.get("cls") or by_ext.get("json")
    if member is None:
        return -1
    text = bytes(data[member.offset:member.offset + member.size]).decode("utf-8", "replace")
    try:
        if member.ext == "cls":
            return int(text.strip())
        value = json.loads(text)
        label = value.get("label", value.get("cls", -1)) if isinstance(value, dict) else -1
        return int(label) if isinstance(label, int) else -1
    except ValueError:
        raise DatasetError(f"{tar}@{member.offset}: the label of sample {member.name} is not "
                           f"{'a decimal integer' if member.ext == 'cls' else 'JSON'}") from None


class StockShardDataset(ShardDataset):
    """A folder of webdataset tar shards without a manifest (module docstring); reads like
    ``ShardDataset`` (bytes in place through ``mmap``, one label per sample)."""

    def __init__(self, root: str | Path) -> None:  # noqa: D107 -- ShardDataset's checks
        # need a manifest; everything here comes from the tars themselves
        self.root = Path(root)
        tars = sorted(self.root.glob("*.tar"))
        if not tars:
            raise DatasetError(f"{self.root} holds no .tar shards (expected {SHARD_FORMAT})")
        self.verified = False  # nothing decoded them yet: the feed checks complete files
        self.skipped = []
        self.tar_paths = tars
        shard_ids, offsets, sizes, labels = [], [], [], []
        no_image = 0
        for k, (tar, samples) in enumerate(zip(tars, load_indexes(self.root, tars))):
            with open(tar, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                for members in samples:
                    image = next((e for e in members if e.ext in IMAGE_EXTS), None)
                    if image is None:
                        no_image += 1
                        continue
                    shard_ids.append(k)
                    offsets.append(image.offset)
                    sizes.append(image.size)
                    labels.append(sample_label(members, m, tar))
        if not shard_ids:
            raise DatasetError(f"{self.root}: its {len(tars)} shard(s) hold no image samples "
                               f"(expected {SHARD_FORMAT}; {no_image} samples without an image)")
        self.shard_ids = np.array(shard_ids, dtype=np.int32)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.labels = np.array(labels, dtype=np.int64)
        self._maps = None
        top = int(self.labels.max())
        self.classes = [str(c) for c in range(top + 1)]
        labelled = int((self.labels >= 0).sum())
        log.info("%s: %d webdataset shards without a manifest: %d samples (%d without an "
                 "image skipped), %d labelled, %d classes (from the labels)", self.root,
                 len(tars), len(offsets), no_image, labelled, len(self.classes))
        self.no_image = no_image

    def read(self, i: int) -> tuple[np.ndarray, int]:
        m = self._mapped()[self.shard_ids[i]]
        data = np.frombuffer(m, dtype=np.uint8, count=int(self.sizes[i]),
                             offset=int(self.offsets[i]))
        return data, int(self.labels[i])
