"""The .beton file layout (FFCV format version 2), written by our own streaming writer.

A .beton with an ``image`` (FFCV ``RGBImageField``) and a ``label`` (``IntField``) field is::

    offset 0        header      version u2, num_fields u2, page_size u4, num_samples u8,
                                alloc_table_ptr u8 (24 bytes, little-endian)
    24              fields      per field: type_id u1 (2 = RGB image, 1 = int), name u1[16],
                                arguments u1[1024] (zeros for both), C-aligned: 1041 bytes
    24 + 2 * 1041   metadata    per sample: image (mode u1: 0 jpg / 1 raw, width u2, height u2,
                                data_ptr u8; packed, 13 bytes), then label i8 at offset 16:
                                24 bytes per sample
    page-aligned    data pages  page_size bytes each; a sample's bytes never cross a page
                                boundary (FFCV's page-wise caches rely on it); data_ptr is
                                the absolute file offset of its bytes
    end             alloc table per stored blob: sample_id u8, ptr u8, size u8

Checksum: ``block_digest`` is the sha256 of the concatenated sha256 digests of the file's
consecutive ``page_size`` blocks (the last one may be short). The data pages are exactly
such blocks, so each worker hashes the pages it writes and the main process only hashes the
head (header, fields, metadata) and the allocation table: no serial pass over the file.

Our writer reserves metadata room for every input (the good ones are known only at the
end), so the data region starts after ``inputs`` entries; only ``num_samples`` are read.
``tests/pipelines/convert/test_beton_layout.py`` checks these dtypes against FFCV's own.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

VERSION = 2
IMAGE_TYPE_ID, INT_TYPE_ID = 2, 1
MODE_JPG, MODE_RAW = 0, 1
PAGE_SIZE = 1 << 23           # 8 MiB, FFCV's default
NAME_BYTES, ARG_BYTES = 16, 1024

HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                   ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", NAME_BYTES)),
                       ("arguments", ("<u1", (ARG_BYTES,)))], align=True)
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"),
                       ("data_ptr", "<u8")])
SAMPLE_META = np.dtype([("", IMAGE_META), ("", "<i8")], align=True)  # f0 image, f1 label
ALLOC_ENTRY = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
FIELDS = (("image", IMAGE_TYPE_ID), ("label", INT_TYPE_ID))


def page_align(offset: int, page_size: int = PAGE_SIZE) -> int:
    return -(-offset // page_size) * page_size


def metadata_offset() -> int:
    return HEADER.itemsize + len(FIELDS) * FIELD_DESC.itemsize


def data_start(reserved_samples: int, page_size: int = PAGE_SIZE) -> int:
    """First byte of the data pages when metadata room for ``reserved_samples`` is kept."""
    return page_align(metadata_offset() + reserved_samples * SAMPLE_META.itemsize, page_size)


def field_descriptors() -> bytes:
    desc = np.zeros(len(FIELDS), dtype=FIELD_DESC)
    for i, (name, type_id) in enumerate(FIELDS):
        encoded = name.encode("ascii")
        desc[i]["type_id"] = type_id
        desc[i]["name"][:len(encoded)] = np.frombuffer(encoded, np.uint8)
    return desc.tobytes()


def header(num_samples: int, alloc_table_ptr: int, page_size: int = PAGE_SIZE) -> bytes:
    h = np.zeros(1, dtype=HEADER)
    h["version"], h["num_fields"], h["page_size"] = VERSION, len(FIELDS), page_size
    h["num_samples"], h["alloc_table_ptr"] = num_samples, alloc_table_ptr
    return h.tobytes()


def block_digest(path: str, block: int) -> str:
    """The checksum of the file at ``path`` as defined above (the simple sequential twin of
    the writer's distributed computation)."""
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            outer.update(hashlib.sha256(chunk).digest())
    return outer.hexdigest()


def combine_block_digests(digests: list[bytes]) -> str:
    outer = hashlib.sha256()
    for d in digests:
        outer.update(d)
    return outer.hexdigest()


class PageFiller:
    """One worker's current data page: samples are packed into it until the next one would
    not fit; then the page is written at its own place in the file (``os.pwrite``) and a
    fresh page number is drawn from the shared counter. No two workers share a page."""

    def __init__(self, fd: int, start: int, counter, page_size: int = PAGE_SIZE):
        self.fd, self.start, self.counter, self.page_size = fd, start, counter, page_size
        self.page = -1
        self.buf = bytearray(page_size)
        self.used = 0
        self.digests: dict[int, bytes] = {}  # page -> sha256 of the full page written

    def _new_page(self) -> None:
        with self.counter.get_lock():
            self.page = self.counter.value
            self.counter.value += 1
        self.used = 0

    def flush(self) -> None:
        """Write the current page (zero-padded to full size) at its place; idempotent."""
        if self.page >= 0 and self.used:
            self.buf[self.used:] = bytes(self.page_size - self.used)
            os.pwrite(self.fd, self.buf, self.start + self.page * self.page_size)
            self.digests[self.page] = hashlib.sha256(self.buf).digest()
        self.page, self.used = -1, 0

    def put(self, data: bytes) -> int:
        """Place ``data`` in a page; return its absolute file offset."""
        if len(data) > self.page_size:
            raise ValueError(f"{len(data)} bytes do not fit in a {self.page_size}-byte page")
        if self.page < 0 or self.used + len(data) > self.page_size:
            self.flush()
            self._new_page()
        at = self.used
        self.buf[at:at + len(data)] = data
        self.used += len(data)
        return self.start + self.page * self.page_size + at
