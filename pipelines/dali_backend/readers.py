"""Datasets the DALI executor reads: encoded bytes and a label by global sample index.

Two layouts, one interface (``read(i) -> (uint8 bytes [n], label)``, ``describe(i)``):

- ``FolderDataset``: an ImageFolder tree, scanned with ``pipelines.folder`` so unusable
  files are reported and left out (``verify=True`` also decodes every file once with PIL).
- ``ShardDataset``: a ``dino-convert --format wds`` output folder: tar shards read in place
  through ``mmap`` at the offsets of their DALI index files (never extracted; member names
  are never used as paths). ``manifest.json`` must be there (it is written last), and every
  shard must have the size and sample count the manifest records.
- ``stock_shards.StockShardDataset``: webdataset shards written by other tools (no
  manifest), indexed once.

The loader decides the order (a whole-dataset permutation per epoch, sharded by global
rank) and feeds the bytes to the DALI graph; see ``loader.py``.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from ..folder import DatasetError, Skipped, scan_image_folder
from ..formats.manifest import Manifest
from ..formats.wds_index import IMAGE_EXT, LABEL_EXT, parse_index


class FolderDataset:
    """An ImageFolder tree: ``root/<class>/<image>``."""

    def __init__(self, root: str | Path, verify: bool = False) -> None:
        scan = scan_image_folder(root, verify=verify)
        self.root = Path(root)
        self.verified = verify  # every file decoded once by the scan
        self.classes: list[str] = scan.classes
        self.skipped: list[Skipped] = scan.skipped
        self.paths = [p for p, _ in scan.samples]
        self.labels = np.array([label for _, label in scan.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        return np.fromfile(self.paths[i], dtype=np.uint8), int(self.labels[i])

    def describe(self, i: int) -> str:
        return self.paths[i]


class ShardDataset:
    """Tar shards + DALI index files + manifest, as written by ``pipelines.convert.wds``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset path is not a directory: {self.root}")
        try:
            manifest = Manifest.load(self.root / "manifest.json")
        except (FileNotFoundError, ValueError) as e:
            raise DatasetError(str(e)) from None
        if manifest.format != "wds":
            raise DatasetError(f"{self.root}/manifest.json describes a {manifest.format!r} "
                               "dataset, not 'wds' tar shards")
        self.verified = True  # the converter decoded every image it wrote
        self.classes: list[str] = list(manifest.classes)
        self.skipped = [Skipped(s["path"], s["reason"]) for s in manifest.skipped]
        self.tar_paths: list[Path] = []
        shard_ids, offsets, sizes, label_offsets, label_sizes = [], [], [], [], []
        for k, shard in enumerate(manifest.shards):
            tar, entries = self._check_shard(shard)
            self.tar_paths.append(tar)
            for members in entries:
                by_ext = {m.ext: m for m in members}
                image, label = by_ext[IMAGE_EXT], by_ext[LABEL_EXT]
                shard_ids.append(k)
                offsets.append(image.offset)
                sizes.append(image.size)
                label_offsets.append(label.offset)
                label_sizes.append(label.size)
        if not shard_ids:
            raise DatasetError(f"{self.root}: the manifest lists no samples")
        if len(shard_ids) != manifest.num_samples:
            raise DatasetError(f"{self.root}: the shards hold {len(shard_ids)} samples, the "
                               f"manifest says {manifest.num_samples}")
        self.shard_ids = np.array(shard_ids, dtype=np.int32)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        self._label_at = (np.array(label_offsets, dtype=np.int64),
                          np.array(label_sizes, dtype=np.int64))
        self._maps: list[mmap.mmap] | None = None

    def _check_shard(self, shard: dict) -> tuple[Path, list]:
        """The shard's tar path and parsed index; a clear error for anything inconsistent."""
        tar, idx = self.root / shard["name"], self.root / shard["index"]
        if not tar.is_file():
            raise DatasetError(f"shard {tar} listed in the manifest is missing")
        if tar.stat().st_size != shard["bytes"]:
            raise DatasetError(f"shard {tar} is {tar.stat().st_size} bytes, the manifest says "
                               f"{shard['bytes']}: truncated or replaced; convert again")
        try:
            entries = parse_index(idx)
        except (OSError, ValueError) as e:
            raise DatasetError(f"index of shard {tar}: {e}") from None
        if len(entries) != shard["count"]:
            raise DatasetError(f"index {idx} lists {len(entries)} samples, the manifest says "
                               f"{shard['count']}")
        for members in entries:
            exts = {m.ext for m in members}
            if not {IMAGE_EXT, LABEL_EXT} <= exts:
                raise DatasetError(f"index {idx}: sample {members[0].name} lacks a "
                                   f".{IMAGE_EXT} or .{LABEL_EXT} member")
            if any(m.offset + m.size > shard["bytes"] for m in members):
                raise DatasetError(f"index {idx}: sample {members[0].name} lies past the end "
                                   f"of {tar}")
        return tar, entries

    def __len__(self) -> int:
        return len(self.offsets)

    def _mapped(self) -> list[mmap.mmap]:
        if self._maps is None:  # opened lazily: each worker process maps the shards itself
            maps = []
            for p in self.tar_paths:
                with open(p, "rb") as f:
                    maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            self._maps = maps
        return self._maps

    def read(self, i: int) -> tuple[np.ndarray, int]:
        m = self._mapped()[self.shard_ids[i]]
        data = np.frombuffer(m, dtype=np.uint8, count=int(self.sizes[i]),
                             offset=int(self.offsets[i]))
        lo, n = int(self._label_at[0][i]), int(self._label_at[1][i])
        try:
            label = int(bytes(m[lo:lo + n]).decode("ascii"))
        except ValueError:
            raise DatasetError(f"{self.describe(i)}: label is not a decimal integer") from None
        return data, label

    def describe(self, i: int) -> str:
        return f"{self.tar_paths[self.shard_ids[i]]}@{int(self.offsets[i])}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = None  # mmaps do not pickle; workers reopen them
        return state


def open_dataset(data: str | Path, verify_images: bool = False) -> FolderDataset | ShardDataset:
    """A converted shard folder (has ``manifest.json``), a folder of stock webdataset
    shards (``stock_shards.py``), or an ImageFolder tree. A folder of shards whose
    conversion did not finish (``*.shard.json`` markers, no manifest) is refused."""
    path = Path(data)
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if (path / "manifest.json").is_file() or any(path.glob("*.shard.json")):
        return ShardDataset(path)
    if any(path.glob("*.tar")):
        from .stock_shards import StockShardDataset
        return StockShardDataset(path)
    return FolderDataset(path, verify=verify_images)
