"""``dino-convert --format wds``: an ImageFolder tree -> WebDataset tar shards for DALI.

Layout of the output folder::

    000000.tar         <key>.jpg (RGB JPEG) + <key>.cls (ASCII decimal label) per sample
    000000.idx         the index DALI's ``fn.readers.webdataset`` takes (``index_paths``)
    000000.shard.json  what the shard holds (count, bytes, sha256, skipped inputs): the
                       marker that the shard is finished, used to resume
    ...
    manifest.json      classes, shards, counts, checksums, skipped files: written last

The input list (``scan_image_folder`` order) is cut into fixed slices of ``shard_size``
inputs; shard ``k`` holds the good images of slice ``k``, so a shard's content never depends
on other shards and an interrupted run can resume shard by shard. A shard is written to a
temporary name and renamed only when complete (tar first, then its index, then the marker);
the manifest, which readers require, is removed at the start of a run and written last.

The index format is the one DALI's own ``wds2idx`` tool writes (version ``v1.2``): a header
line ``v1.2 <number of samples>``, then one line per sample listing, for each member of the
sample in tar order, ``<extension> <data offset> <size> <member name>``; offsets are byte
offsets of the member's data (after its 512-byte header) in the tar.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..folder import scan_image_folder
from .common import (ConvertConfig, EncodeError, Manifest, atomic_write_bytes, encode_jpeg,
                     sha256_file)

INDEX_VERSION = "v1.2"
IMAGE_EXT = "jpg"
LABEL_EXT = "cls"
_SHARD_RE = re.compile(r"^(\d{6})\.(tar|idx|shard\.json)$")
_TEMP_RE = re.compile(r"^\.(\d{6}\.(tar|idx|shard\.json)|manifest\.json)\.tmp\d+$")
_MTIME = 0  # fixed member timestamps: the same input gives byte-identical shards


@dataclass(frozen=True)
class IndexEntry:
    """One member of a sample in a tar shard: where its data lies."""

    ext: str
    offset: int  # byte offset of the member's data in the tar
    size: int
    name: str


@dataclass
class ShardRecord:
    """The sidecar ``NNNNNN.shard.json``: present only once the shard is complete."""

    name: str        # "000000.tar"
    index: str       # "000000.idx"
    count: int       # samples in the tar
    bytes: int       # tar size
    sha256: str
    inputs: str      # digest of the shard's input slice and encoding options
    skipped: list[dict]

    def manifest_entry(self) -> dict:
        return {"name": self.name, "index": self.index, "count": self.count,
                "bytes": self.bytes, "sha256": self.sha256}


def shard_stem(k: int) -> str:
    return f"{k:06d}"


def sample_key(global_index: int) -> str:
    """Member base name of input ``global_index``: digits only (DALI splits at the first dot)."""
    return f"{global_index:09d}"


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


# ----------------------------------------------------------------------------- encoding
def _encode_task(task: tuple[int, str, int, int, int]) -> tuple[int, bytes | None, str | None]:
    """Pool worker: (input index, path, label, max_side, quality) -> (index, jpeg, reason)."""
    index, path, _label, max_side, quality = task
    try:
        data, _size = encode_jpeg(path, max_side, quality)
    except EncodeError as e:
        return index, None, str(e)
    except OSError as e:  # vanished or unreadable between scan and encode
        return index, None, f"unreadable ({e.strerror or e})"
    return index, data, None


def _start_pool(workers: int):
    """A process pool for encoding (fork where available: workers need no re-import)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers)


# ----------------------------------------------------------------------------- shards
class _ShardWriter:
    """Writes one tar shard and its index under temporary names; ``finish`` publishes them."""

    def __init__(self, dst: Path, k: int):
        self.tar_path = dst / f"{shard_stem(k)}.tar"
        self.idx_path = dst / f"{shard_stem(k)}.idx"
        self.tmp_tar = dst / f".{shard_stem(k)}.tar.tmp{os.getpid()}"
        self._file = open(self.tmp_tar, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples: list[list[IndexEntry]] = []

    def _member(self, name: str, data: bytes) -> IndexEntry:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
        header = len(info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors))
        offset = self._tar.offset + header
        self._tar.addfile(info, _BytesReader(data))
        return IndexEntry(name.rsplit(".", 1)[1], offset, len(data), name)

    def add(self, key: str, jpeg: bytes, label: int) -> None:
        self.samples.append([self._member(f"{key}.{IMAGE_EXT}", jpeg),
                             self._member(f"{key}.{LABEL_EXT}", str(label).encode())])

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self.tmp_tar.unlink(missing_ok=True)

    def finish(self) -> tuple[int, str]:
        """Close, fsync and rename tar then index; returns (tar bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_tar, self.tar_path)
        atomic_write_bytes(self.idx_path, format_index(self.samples).encode())
        return self.tar_path.stat().st_size, sha256_file(self.tar_path)


class _BytesReader:
    """The minimal file object ``tarfile.addfile`` copies from."""

    def __init__(self, data: bytes):
        self._data, self._pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return bytes(chunk)


def _inputs_digest(inputs: list[tuple[str, int]], cfg: ConvertConfig) -> str:
    h = hashlib.sha256(f"{cfg.max_side}:{cfg.jpeg_quality}\n".encode())
    for path, label in inputs:
        h.update(f"{label}\t{path}\n".encode())
    return h.hexdigest()


def _finished(dst: Path, k: int, digest: str) -> ShardRecord | None:
    """The record of shard ``k`` if a previous run completed it from the same inputs."""
    marker = dst / f"{shard_stem(k)}.shard.json"
    try:
        rec = ShardRecord(**json.loads(marker.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if rec.inputs != digest:
        return None
    if rec.count == 0:
        return rec
    tar, idx = dst / rec.name, dst / rec.index
    if not (tar.is_file() and idx.is_file() and tar.stat().st_size == rec.bytes):
        return None
    return rec


def _remove_stale(dst: Path, num_shards: int) -> None:
    """Drop shard files an earlier run wrote that this run no longer produces, and temp files."""
    for p in dst.iterdir():
        m = _SHARD_RE.match(p.name)
        if (m and int(m.group(1)) >= num_shards) or _TEMP_RE.match(p.name):
            p.unlink(missing_ok=True)


def convert(cfg: ConvertConfig) -> Manifest:
    """Convert ``cfg.src`` (ImageFolder) into tar shards + DALI indexes + manifest in ``cfg.dst``.

    Resumable: shards whose marker matches the current inputs and options are kept as they
    are; all others are (re)written. Bad images are skipped and listed in the manifest.
    """
    from tqdm import tqdm

    if cfg.shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {cfg.shard_size}")
    scan = scan_image_folder(cfg.src)
    dst = Path(cfg.dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "manifest.json").unlink(missing_ok=True)
    slices = [scan.samples[i:i + cfg.shard_size]
              for i in range(0, len(scan.samples), cfg.shard_size)]
    records: dict[int, ShardRecord] = {}
    todo: list[int] = []
    for k, inputs in enumerate(slices):
        rec = _finished(dst, k, _inputs_digest(inputs, cfg))
        if rec is None:
            todo.append(k)
        else:
            records[k] = rec
    _remove_stale(dst, len(slices))

    tasks = [(k * cfg.shard_size + j, path, label, cfg.max_side, cfg.jpeg_quality)
             for k in todo for j, (path, label) in enumerate(slices[k])]
    pool = _start_pool(cfg.workers) if cfg.workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap(_encode_task, tasks, chunksize=8) if pool else map(_encode_task, tasks)
        with tqdm(total=len(tasks), desc="dino-convert wds", unit="img",
                  disable=not cfg.progress) as bar:
            for k in todo:
                records[k] = _write_shard(dst, k, slices[k], cfg, results, bar)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    ordered = [records[k] for k in range(len(slices))]
    manifest = Manifest(
        format="wds", classes=scan.classes,
        num_samples=sum(r.count for r in ordered),
        shards=[r.manifest_entry() for r in ordered if r.count > 0],
        skipped=[{"path": s.path, "reason": s.reason} for s in scan.skipped]
        + [s for r in ordered for s in r.skipped],
        options={"shard_size": cfg.shard_size, "max_side": cfg.max_side,
                 "jpeg_quality": cfg.jpeg_quality, "image_ext": IMAGE_EXT,
                 "label_ext": LABEL_EXT, "index_version": INDEX_VERSION})
    manifest.save(dst / "manifest.json")
    return manifest


def _write_shard(dst: Path, k: int, inputs: list[tuple[str, int]], cfg: ConvertConfig,
                 results: Iterator[tuple[int, bytes | None, str | None]], bar) -> ShardRecord:
    """Consume this shard's encoded inputs from ``results`` and publish the shard."""
    writer = _ShardWriter(dst, k)
    skipped: list[dict] = []
    try:
        for j, (path, label) in enumerate(inputs):
            index, data, reason = next(results)
            if index != k * cfg.shard_size + j:
                raise RuntimeError(f"encoder results out of order: {index} for input {path}")
            if data is None:
                skipped.append({"path": path, "reason": reason})
            else:
                writer.add(sample_key(index), data, label)
            bar.update(1)
    except BaseException:
        writer.abort()
        raise
    name = f"{shard_stem(k)}.tar"
    if writer.samples:
        size, digest = writer.finish()
    else:  # every input bad: no tar (an empty tar is not a valid webdataset shard)
        writer.abort()
        writer.tar_path.unlink(missing_ok=True)
        writer.idx_path.unlink(missing_ok=True)
        size, digest = 0, ""
    rec = ShardRecord(name=name, index=f"{shard_stem(k)}.idx", count=len(writer.samples),
                      bytes=size, sha256=digest, inputs=_inputs_digest(inputs, cfg),
                      skipped=skipped)
    atomic_write_bytes(dst / f"{shard_stem(k)}.shard.json", json.dumps(asdict(rec)).encode())
    return rec
