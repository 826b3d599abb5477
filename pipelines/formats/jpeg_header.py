"""What a JPEG's markers say about it, read without decoding a pixel.

``dino-convert`` stores a JPEG byte for byte when it is already what training wants: 8-bit,
Huffman-coded (baseline, extended or progressive), three components, upright (no EXIF
orientation other than 1), longer side within ``max_side``. Everything needed for that
decision sits in the marker segments before the first scan (SOS): the frame header (SOF:
precision, height, width, components), Adobe's APP14 colour transform, and EXIF's
orientation tag in APP1. ``segments`` walks them (the one marker walk of the project: the
DALI feed's ``frame_size`` uses it too); ``parse_jpeg`` reads them and also checks the file's
structure: segment lengths that stay inside the file, a frame header before the first
scan, and an end-of-image marker (FF D9) after it, which a truncated file lacks (inside
entropy-coded data an FF byte is always followed by 00 or a restart marker, so FF D9 can
only be the real end).

A file that fails these checks is not rejected here: it goes to the full decoder, whose
verdict (and error message) decides.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Frame headers: 0xC0..0xCF except DHT (C4), JPG (C8), DAC (CC). Huffman ones we pass through:
HUFFMAN_8BIT_FRAMES = (0xC0, 0xC1, 0xC2)
_FRAMES = tuple(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
_STANDALONE = tuple(range(0xD0, 0xD8)) + (0x01,)  # RSTn, TEM: no length field
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegInfo:
    """The frame and colour facts of a JPEG, and whether its structure is complete."""

    width: int
    height: int
    components: int
    precision: int
    frame: int              # the SOF marker's second byte (0xC0 baseline, 0xC2 progressive)
    orientation: int        # EXIF orientation, 1 when absent
    adobe_transform: int    # APP14 transform flag, -1 when there is no Adobe segment
    complete: bool          # an end-of-image marker follows the first scan

    @property
    def storable_as_is(self) -> bool:
        """A plain upright YCbCr colour JPEG every decoder (PIL, FFCV, DALI) reads as RGB."""
        return (self.complete and self.frame in HUFFMAN_8BIT_FRAMES and self.precision == 8
                and self.components == 3 and self.orientation == 1
                and self.adobe_transform in (-1, 1) and self.width > 0 and self.height > 0)


def _exif_orientation(payload: bytes) -> int:
    """The orientation tag of an APP1 EXIF payload (after ``Exif\\0\\0``); 1 if unreadable."""
    tiff = payload[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return 1
        tag, kind, _n = struct.unpack_from(end + "HHI", tiff, at)
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
            (value,) = struct.unpack_from(end + "H", tiff, at + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, body start, segment end) of each marker segment after SOI, up to and
    including the first scan header (SOS, 0xDA). The walk just stops at anything malformed
    (no SOI, a byte that is not a marker, a length running past the end, an EOI before the
    scan): a caller that needs the scan knows the header was broken when it did not see one."""
    if not data.startswith(SOI):
        return
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:  # end of image before any scan
            return
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > n:
            return
        yield marker, pos + 4, end
        if marker == 0xDA:
            return
        pos = end


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the frame header, walking only as far as it; None when there is
    none before the scan or the walk fails (callers then ask PIL)."""
    for marker, body, end in segments(data):
        if marker in _FRAMES:
            if end - body < 6:
                return None
            height, width = struct.unpack_from(">HH", data, body + 1)
            return (width, height) if width > 0 and height > 0 else None
    return None


def parse_jpeg(data: bytes) -> JpegInfo | None:
    """The facts of ``data``'s header; None when it is not a well-formed JPEG header (no
    SOI, a segment running past the end, no frame header before the scan)."""
    frame = None
    orientation, adobe = 1, -1
    for marker, body, end in segments(data):
        if marker in _FRAMES:
            if end - body < 6:
                return None
            precision, height, width, comps = struct.unpack_from(">BHHB", data, body)
            frame = (marker, precision, width, height, comps)
        elif marker == 0xE1 and data[body:body + 6] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[body:end])
        elif marker == 0xEE and data[body:body + 5] == b"Adobe" and end - body >= 12:
            adobe = data[body + 11]
        elif marker == 0xDA:  # start of scan: the header is over
            if frame is None:
                return None
            marker_, precision, width, height, comps = frame
            complete = data.rfind(EOI, end) >= 0
            return JpegInfo(width, height, comps, precision, marker_, orientation, adobe,
                            complete)
    return None
