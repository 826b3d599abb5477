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

The members and the index format are ``pipelines.formats.wds_index`` (the DALI reader's too).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from . import prepare
from ..files import atomic_write_bytes
from ..formats.manifest import Manifest
from ..formats.wds_index import (IMAGE_EXT, INDEX_VERSION, LABEL_EXT, IndexEntry,
                                 format_index)
from .common import ConvertConfig
from .listing import Listing
from .progress import Progress
from .sources import label_counts, list_inputs
from .workers import WorkerPool

_SHARD_RE = re.compile(r"^(\d{6})\.(tar|idx|shard\.json)$")
_TEMP_RE = re.compile(r"^\.(\d{6}\.(tar|idx|shard\.json)|manifest\.json)\.tmp\d+$")
_MTIME = 0  # fixed member timestamps: the same input gives byte-identical shards


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


# ----------------------------------------------------------------------------- shards
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads the archive to whole records, as GNU tar and tarfile do


def tar_member_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file member (fixed mtime, mode 0444)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _MTIME, 0o444
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


class _ShardWriter:
    """Writes one tar shard (members appended by hand: header, data, zero padding) and its
    index under temporary names, hashing as it goes; ``finish`` publishes them."""

    def __init__(self, dst: Path, k: int):
        self.tar_path = dst / f"{shard_stem(k)}.tar"
        self.idx_path = dst / f"{shard_stem(k)}.idx"
        self.tmp_tar = dst / f".{shard_stem(k)}.tar.tmp{os.getpid()}"
        self._file = open(self.tmp_tar, "wb")
        self._hash = hashlib.sha256()
        self._offset = 0
        self.samples: list[list[IndexEntry]] = []

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def _member(self, name: str, data: bytes) -> IndexEntry:
        self._write(tar_member_header(name, len(data)))
        entry = IndexEntry(name.rsplit(".", 1)[1], self._offset, len(data), name)
        self._write(data)
        self._write(bytes(-len(data) % _BLOCK))
        return entry

    def add(self, key: str, jpeg: bytes, label: int) -> None:
        self.samples.append([self._member(f"{key}.{IMAGE_EXT}", jpeg),
                             self._member(f"{key}.{LABEL_EXT}", str(label).encode())])

    def abort(self) -> None:
        self._file.close()
        self.tmp_tar.unlink(missing_ok=True)

    def finish(self) -> tuple[int, str]:
        """End the archive, fsync and rename tar then index; returns (tar bytes, sha256)."""
        self._write(bytes(2 * _BLOCK))
        self._write(bytes(-self._offset % _RECORD))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_tar, self.tar_path)
        atomic_write_bytes(self.idx_path, format_index(self.samples).encode())
        return self._offset, self._hash.hexdigest()


def _inputs_digest(inputs: Iterable[tuple[str, int]], cfg: ConvertConfig) -> str:
    h = hashlib.sha256(f"{cfg.max_side}:{cfg.jpeg_quality}:{cfg.check}\n".encode())
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


@dataclass
class _ShardJob:
    """Worker side: one task is one whole shard, written by the worker itself."""

    dst: Path
    cfg: ConvertConfig

    def start(self, worker_id: int) -> None:
        return None

    def run(self, _state, task: tuple[int, list[tuple[str, int]]], tick) -> ShardRecord:
        k, inputs = task
        return write_shard(self.dst, k, inputs, self.cfg, tick)

    def finish(self, _state) -> None:
        return None


def write_shard(dst: Path, k: int, inputs: list[tuple[str, int]], cfg: ConvertConfig,
                tick=lambda n: None) -> ShardRecord:
    """Prepare shard ``k``'s inputs (one read, at most one decode each) and publish it."""
    writer = _ShardWriter(dst, k)
    skipped: list[dict] = []
    done = 0
    try:
        for j, (path, label) in enumerate(inputs):
            try:
                data = prepare.prepare_image(path, cfg.max_side, cfg.jpeg_quality,
                                             check=cfg.check).data
            except Exception as e:  # hostile input raises many types; one line each
                skipped.append({"path": path, "reason": prepare.describe_failure(e)})
            else:
                writer.add(sample_key(k * cfg.shard_size + j), data, label)
            done += 1
            if done == 16:
                tick(done)
                done = 0
    except BaseException:
        writer.abort()
        raise
    tick(done)
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


def _plan(dst: Path, samples: Listing, cfg: ConvertConfig
          ) -> tuple[dict[int, ShardRecord], list[int]]:
    """(records of the shards a previous run finished from the same inputs, the shards still
    to write); drops shard files this run will not produce."""
    size, num_shards = cfg.shard_size, -(-len(samples) // cfg.shard_size)
    records: dict[int, ShardRecord] = {}
    todo: list[int] = []
    for k in range(num_shards):
        rec = _finished(dst, k, _inputs_digest(samples.items(k * size, (k + 1) * size), cfg))
        if rec is None:
            todo.append(k)
        else:
            records[k] = rec
    _remove_stale(dst, num_shards)
    return records, todo


def _dropped(samples: Listing, ordered: list[ShardRecord], size: int) -> list[int]:
    """Indices of the inputs the shards skipped (a shard's skipped paths lie in its slice)."""
    out = []
    for k, rec in enumerate(ordered):
        gone = {s["path"] for s in rec.skipped}
        if gone:
            out += [i for i in range(k * size, min((k + 1) * size, len(samples)))
                    if samples.path(i) in gone]
    return out


def convert(cfg: ConvertConfig) -> Manifest:
    """Convert ``cfg.src`` into tar shards + DALI indexes + manifest in ``cfg.dst``.

    Resumable: shards whose marker matches the current inputs and options are kept as they
    are; all others are (re)written, each by one worker process from start to end. Bad
    images are skipped and listed in the manifest. The ``cfg.workers`` workers are forked
    before the inputs are listed (``WorkerPool``): a task carries its shard's paths.
    """
    if cfg.shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {cfg.shard_size}")
    cfg.check_options()
    dst, size = Path(cfg.dst), cfg.shard_size
    with WorkerPool(_ShardJob(dst, cfg), cfg.workers, inflight=2 * cfg.workers) as pool:
        inputs = list_inputs(cfg)
        if dst.exists() and not dst.is_dir():
            raise NotADirectoryError(f"output path {dst} exists and is not a folder")
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "manifest.json").unlink(missing_ok=True)
        samples = inputs.samples
        records, todo = _plan(dst, samples, cfg)
        total = sum(min(size, len(samples) - k * size) for k in todo)
        tasks = ((k, list(samples.items(k * size, (k + 1) * size))) for k in todo)
        with Progress(total, "dino-convert wds", cfg.progress) as progress:
            for k, rec in zip(todo, pool.run(tasks, on_tick=lambda n: progress.update(n))):
                records[k] = rec
    ordered = [records[k] for k in range(len(records))]
    manifest = Manifest(
        format="wds", classes=inputs.classes,
        num_samples=sum(r.count for r in ordered),
        shards=[r.manifest_entry() for r in ordered if r.count > 0],
        skipped=inputs.skipped + [s for r in ordered for s in r.skipped],
        options={"shard_size": cfg.shard_size, "max_side": cfg.max_side,
                 "jpeg_quality": cfg.jpeg_quality, "image_ext": IMAGE_EXT,
                 "label_ext": LABEL_EXT, "index_version": INDEX_VERSION, "check": cfg.check},
        labelled=inputs.labelled, seconds=progress.seconds,
        label_counts=label_counts(samples.labels, _dropped(samples, ordered, size)))
    manifest.save(dst / "manifest.json")
    return manifest
