"""``dino-convert --format ffcv``: an image folder to one .beton, with our streaming writer.

Output in ``cfg.dst``: ``<src folder name>.beton`` with fields ``image`` (FFCV
RGBImageField: longer side at most ``max_side``; stored as JPEG, raw pixels, or a mix with
``compress_probability`` JPEG) and ``label`` (IntField: the class index, -1 when unlabeled),
then ``manifest.json`` (classes, count, checksum (``beton_layout.block_digest``), skipped
files and why, options), written last. The layout is FFCV's own (``beton_layout``); FFCV's ``Reader``/``Loader`` read it.

How: worker processes read each input once (``prepare.prepare_image``): a JPEG that is
already RGB, upright and small enough is stored byte for byte without being decoded;
anything else is decoded once, converted and re-encoded. Each worker packs what it made
into its own data page and writes full pages straight into the file at pages it claims
from a shared counter (as FFCV's writer does); the main process only collects the small
per-sample records in input order, writes each one's metadata entry into the reserved
region as it comes and spools its allocation-table entry, and at the end copies the table
behind the data and writes the header. Memory is flat: the workers are forked before the
inputs are listed (a task carries its 16 paths), the input list is compact (``listing``),
a bounded number of tasks is in flight, one page per worker, and no per-sample record is
kept in memory.

Reliability: a bad file is skipped with its reason and never costs a good image. The file
is written as a hidden ``.<name>.partial`` and renamed only when complete; the old manifest
is removed first, so an interrupted run never leaves a .beton a reader accepts. There is no
resume for .beton: a run after an interruption starts the file again from the beginning.
Running the same conversion again after it finished is a no-op.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import prepare
from .beton_layout import (ALLOC_ENTRY, MODE_JPG, MODE_RAW, PAGE_SIZE, SAMPLE_META,
                           PageFiller, combine_block_digests, data_start, field_descriptors,
                           header, metadata_offset)
from ..files import fsync_path
from ..formats.manifest import Manifest
from .common import ConvertConfig
from .progress import Progress
from .sources import Inputs, label_counts, list_inputs
from ..processes import worker_context
from .workers import WorkerPool

WRITE_MODES = ("raw", "jpg", "proportion")
MANIFEST = "manifest.json"
CHUNK = 16  # inputs per worker task


def _options(cfg: ConvertConfig) -> dict:
    return {"max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality,
            "write_mode": cfg.write_mode, "compress_probability": cfg.compress_probability,
            "check": cfg.check}


def _validate(cfg: ConvertConfig) -> None:
    if cfg.write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {cfg.write_mode!r}")
    if not 0.0 <= cfg.compress_probability <= 1.0:
        raise ValueError(f"compress_probability must be in [0, 1], got "
                         f"{cfg.compress_probability}")
    cfg.check_options()


def page_size_for(cfg: ConvertConfig) -> int:
    """FFCV's default page, doubled until a raw image of ``max_side`` fits in one."""
    size = PAGE_SIZE
    while cfg.write_mode != "jpg" and size < cfg.max_side * cfg.max_side * 3:
        size *= 2
    return size


def _finished(dst: Path, name: str, cfg: ConvertConfig) -> Manifest | None:
    """The manifest of an identical conversion that already finished in dst, else None."""
    manifest_path = dst / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = Manifest.load(manifest_path)
    names = [s.get("name") for s in manifest.shards]
    if manifest.format != "ffcv" or names != [name]:
        raise ValueError(f"{dst} already holds another converted dataset ({manifest.format}: "
                         f"{', '.join(map(str, names))}); use an empty output folder")
    beton = dst / name
    same = (manifest.options == _options(cfg) and beton.is_file()
            and beton.stat().st_size == manifest.shards[0].get("bytes"))
    return manifest if same else None


@dataclass
class _BetonJob:
    """Worker side: prepare each input and place its bytes in this worker's page. A task is
    ``(first data byte of the file, [(index, path, label), ...])``: the workers are forked
    before the inputs are listed, so where the data starts comes with the work."""

    path: str
    page_size: int
    counter: object  # multiprocessing.Value: the next free page
    max_side: int
    quality: int
    write_mode: str
    compress_probability: float
    check: str

    def start(self, worker_id: int) -> dict:
        return {}  # the PageFiller, made at the first task

    def _raw(self, index: int) -> bool:
        if self.write_mode == "proportion":
            return random.Random(index).random() >= self.compress_probability
        return self.write_mode == "raw"

    def run(self, state: dict, task: tuple[int, list[tuple[int, str, int]]], tick
            ) -> list[tuple]:
        data_at, items = task
        if "filler" not in state:
            state["filler"] = PageFiller(os.open(self.path, os.O_WRONLY), data_at,
                                         self.counter, self.page_size)
        filler = state["filler"]
        out = []
        for index, path, label in items:
            try:
                raw = self._raw(index)
                p = prepare.prepare_image(path, self.max_side, self.quality, raw=raw,
                                          check=self.check)
                ptr = filler.put(p.data)
            except Exception as e:  # hostile input raises many types; one line each
                out.append((index, label, None, prepare.describe_failure(e)))
                continue
            out.append((index, label, (ptr, len(p.data), MODE_RAW if raw else MODE_JPG,
                                       p.width, p.height, p.how), None))
        return out

    def finish(self, state: dict) -> dict[int, bytes]:
        filler = state.get("filler")
        if filler is None:  # this worker got no task
            return {}
        filler.flush()
        os.fsync(filler.fd)
        os.close(filler.fd)
        return filler.digests


class _Records:
    """The main process's side of the file's index: each stored sample's metadata entry is
    written into the reserved metadata region as it arrives (in batches of ``BATCH``), and
    its allocation-table entry to an anonymous spool file that ``finish`` copies behind the
    data pages (where the table goes is known only then). Memory: one batch, whatever the
    number of samples."""

    BATCH = 4096

    def __init__(self, fd: int, spool_dir: Path):
        self.fd, self.n = fd, 0
        self.spool = tempfile.TemporaryFile(dir=spool_dir)
        self.meta = np.zeros(self.BATCH, dtype=SAMPLE_META)
        self.alloc = np.zeros(self.BATCH, dtype=ALLOC_ENTRY)
        self.filled = 0

    def add(self, label: int, ptr: int, size: int, mode: int, w: int, h: int) -> None:
        j = self.filled
        self.meta[j]["f0"] = (mode, w, h, ptr)
        self.meta[j]["f1"] = label
        self.alloc[j] = (self.n + j, ptr, size)
        self.filled += 1
        if self.filled == self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries: metadata at its place, the table entries to the spool."""
        if self.filled:
            os.pwrite(self.fd, self.meta[:self.filled].tobytes(),
                      metadata_offset() + self.n * SAMPLE_META.itemsize)
            self.spool.write(self.alloc[:self.filled].tobytes())
            self.n += self.filled
            self.filled = 0

    def finish(self, table_at: int) -> int:
        """Flush, copy the spooled allocation table to ``table_at``; the samples stored."""
        self.flush()
        self.spool.seek(0)
        at = table_at
        while chunk := self.spool.read(self.BATCH * ALLOC_ENTRY.itemsize):
            os.pwrite(self.fd, chunk, at)
            at += len(chunk)
        self.spool.close()
        return self.n


def write_beton(inputs: Inputs, cfg: ConvertConfig, tmp: Path, progress: Progress,
                pool: WorkerPool, counter) -> tuple[int, list[dict], dict[str, int], str,
                                                    list[int]]:
    """Stream every input into ``tmp`` with ``pool`` (running the ``_BetonJob`` that shares
    ``counter``); return (samples stored, skipped lines, counts by how, the file's
    ``block_digest``, the indices of the skipped inputs)."""
    samples = inputs.samples
    page_size = page_size_for(cfg)
    start = data_start(len(samples), page_size)
    with open(tmp, "wb") as f:  # header stays zero (unreadable) until the end
        f.write(bytes(metadata_offset()))
    tasks = ((start, [(i, *samples[i]) for i in range(a, min(a + CHUNK, len(samples)))])
             for a in range(0, len(samples), CHUNK))
    skipped: list[dict] = []
    dropped: list[int] = []
    how: dict[str, int] = {}
    page_digests: dict[int, bytes] = {}
    fd = os.open(tmp, os.O_WRONLY)
    try:
        records = _Records(fd, tmp.parent)
        for chunk in pool.run(tasks, on_finish=page_digests.update):
            for index, label, stored, reason in chunk:
                if stored is None:
                    skipped.append({"path": samples.path(index), "reason": reason})
                    dropped.append(index)
                    progress.update(skipped=1)
                    continue
                ptr, size, mode, w, h, kind = stored
                records.add(label, ptr, size, mode, w, h)
                how[kind] = how.get(kind, 0) + 1
                progress.update(kept=1)
        table_at = start + counter.value * page_size
        n = records.finish(table_at)
        os.pwrite(fd, field_descriptors(), len(header(0, 0)))
        os.fsync(fd)
        os.pwrite(fd, header(n, table_at, page_size), 0)  # last: the file becomes readable
        os.fsync(fd)
    finally:
        os.close(fd)
    return n, skipped, how, _digest(tmp, start, table_at, page_size, page_digests), dropped


def _digest(path: Path, start: int, table_at: int, page_size: int,
            pages: dict[int, bytes]) -> str:
    """``block_digest`` of the finished file from the workers' page digests: only the head
    and the allocation table are read and hashed here."""
    digests = []
    with open(path, "rb") as f:
        for _ in range(0, start, page_size):
            digests.append(hashlib.sha256(f.read(page_size)).digest())
        for page in range((table_at - start) // page_size):
            digests.append(pages[page])
        f.seek(table_at)
        while chunk := f.read(page_size):
            digests.append(hashlib.sha256(chunk).digest())
    return combine_block_digests(digests)


def convert(cfg: ConvertConfig) -> Manifest:
    """Convert ``cfg.src`` into ``cfg.dst/<src name>.beton`` (+ manifest.json)."""
    _validate(cfg)
    src, dst = Path(cfg.src), Path(cfg.dst)
    name = f"{src.resolve().name}.beton"
    tmp = dst / f".{name}.partial"
    counter = worker_context().Value("Q", 0)  # the next free page, claimed by the workers
    job = _BetonJob(str(tmp), page_size_for(cfg), counter, cfg.max_side, cfg.jpeg_quality,
                    cfg.write_mode, cfg.compress_probability, cfg.check)
    with WorkerPool(job, cfg.workers) as pool:  # forked before the inputs are listed
        inputs = list_inputs(cfg)
        if dst.exists() and not dst.is_dir():
            raise NotADirectoryError(f"output path {dst} exists and is not a folder")
        dst.mkdir(parents=True, exist_ok=True)
        done = _finished(dst, name, cfg)
        if done is not None:
            return done
        (dst / MANIFEST).unlink(missing_ok=True)  # from here on dst holds no finished dataset
        with Progress(len(inputs.samples), "dino-convert ffcv", cfg.progress) as progress:
            n, bad, how, digest, dropped = write_beton(inputs, cfg, tmp, progress, pool,
                                                       counter)
    skipped = inputs.skipped + bad
    if n == 0:
        tmp.unlink(missing_ok=True)
        from ..folder import DatasetError
        raise DatasetError(f"no decodable images under {src} ({len(skipped)} files skipped)")
    fsync_path(tmp)
    os.replace(tmp, dst / name)
    fsync_path(dst)
    beton = dst / name
    manifest = Manifest(
        format="ffcv", classes=inputs.classes, num_samples=n,
        shards=[{"name": name, "count": n, "bytes": beton.stat().st_size,
                 "sha256_blocks": digest, "block_size": page_size_for(cfg)}],
        skipped=skipped, options=_options(cfg), labelled=inputs.labelled, stored=how,
        seconds=progress.seconds, label_counts=label_counts(inputs.samples.labels, dropped))
    manifest.save(dst / MANIFEST)
    return manifest
