"""The bad-input corpus: a small ImageFolder mixing good images with every hostile file of
``shared/design/reliability.md``, and the outcome every converter and reader must give.

What counts as bad, and why. A file is BAD when it carries no usable pixels: it is empty,
does not decode completely (truncated, random bytes), is a decompression bomb (more pixels
than PIL's ``MAX_IMAGE_PIXELS``: refusing it is the point of the limit), cannot be read
(permissions, a symlink loop), or is not an image (``.txt``, ``.DS_Store``); a class folder
with nothing usable is reported too. Each bad case names a regular expression its report
line must match (case-insensitive), whichever reader reports it. A file is GOOD when it
decodes to pixels, whatever its container or colour model: a PNG named ``.jpg``, CMYK and
grayscale JPEGs, RGBA and palette PNGs, a 1x1 image. Skipping those would lose good data;
every executor must deliver them as RGB with their class label.

Every good image is a solid colour, unique in the corpus (grayscale: a unique grey). A solid
image stays solid under any crop, resize, flip and blur, so with the photometric ops off
the colour of any output view tells which file was read, even after augmentation. Alpha
channels are fully opaque so that compositing on white and dropping alpha agree.

Usage::

    corpus = write_corpus(tmp_path / "corpus")
    corpus.good          # [Case] in scan order, each with .label and .color
    corpus.bad           # [Case], each with .reason (a regex)
    corpus.notes         # cases that cannot be made on this machine, and why
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("ant", "bee", "cow", "dog")  # sorted: labels 0..3; "cow" stays empty
EMPTY_CLASS = "cow"
IMAGE_SIZE = (20, 16)  # (width, height) of the solid good images
COLOR_TOLERANCE = 12   # max per-channel error allowed after JPEG round trips and resampling

# A kernel file only writable, even by root: opening it for reading raises PermissionError
# for every user, which stands in for chmod 000 when the tests run as root.
WRITE_ONLY_FILE = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class Case:
    """One entry of the corpus and what every consumer must make of it.

    path: the path a folder scan reports (``root/<class>/<name>``; a class folder for the
        empty-class case). kind: what the file is, in words.
    good: label (index of its class folder) and color (RGB uint8 an executor must deliver).
    bad: reason, a regex the reported reason must match (``re.search``, ignoring case).
    """

    path: Path
    kind: str
    label: int | None = None
    color: tuple[int, int, int] | None = None
    reason: str | None = None

    @property
    def good(self) -> bool:
        return self.label is not None

    def matches(self, text: str) -> bool:
        """Whether a report line ``text`` names this file and the expected reason."""
        return str(self.path) in text and re.search(self.reason or "", text, re.I) is not None


@dataclass
class Corpus:
    root: Path
    classes: list[str]
    cases: list[Case]
    notes: list[str] = field(default_factory=list)

    @property
    def good(self) -> list[Case]:
        """Good cases in the order a folder scan lists them (class, then file name)."""
        return sorted((c for c in self.cases if c.good), key=lambda c: (c.label, c.path.name))

    @property
    def bad(self) -> list[Case]:
        return [c for c in self.cases if not c.good]

    def case(self, path: str | Path) -> Case:
        """The case of ``path`` (KeyError if the corpus has no such entry)."""
        for c in self.cases:
            if c.path == Path(path):
                return c
        raise KeyError(path)

    def identify(self, rgb) -> Case:
        """The good case whose colour is nearest to ``rgb``; AssertionError when none is
        within COLOR_TOLERANCE per channel (the executor delivered wrong pixels)."""
        rgb = np.asarray(rgb, dtype=np.float64)
        best = min(self.good, key=lambda c: float(np.abs(rgb - c.color).max()))
        err = float(np.abs(rgb - best.color).max())
        assert err <= COLOR_TOLERANCE, (
            f"colour {rgb.round(1).tolist()} matches no good image (nearest {best.path.name} "
            f"{best.color}, off by {err:.0f})")
        return best


# ----------------------------------------------------------------------------- encoders
def _solid(color: tuple[int, int, int], size=IMAGE_SIZE, mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, color).convert(mode)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette_png(color: tuple[int, int, int], transparency: bool) -> bytes:
    """A mode-P PNG filled with palette entry 1 = ``color``; entry 0 (unused) may be the
    transparent one, so the image carries a tRNS chunk yet every pixel is opaque."""
    img = Image.new("P", IMAGE_SIZE, 1)
    img.putpalette([0, 0, 0, *color] + [0] * (254 * 3))
    return _encoded(img, "PNG", **({"transparency": 0} if transparency else {}))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims ``width`` x ``height`` pixels in ~80 bytes: a
    decompression bomb for any reader that believes the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return _encoded(Image.fromarray(pixels), "JPEG", quality=90)


def _bomb_sides() -> tuple[int, int]:
    """Square sides just over PIL's limit (a warning, which readers must treat as an error)
    and over twice the limit (PIL's own DecompressionBombError)."""
    limit = Image.MAX_IMAGE_PIXELS or 89478485
    return int((1.1 * limit) ** 0.5) + 1, int((2.5 * limit) ** 0.5) + 1


# ----------------------------------------------------------------------------- the corpus
def _palette() -> list[tuple[int, int, int]]:
    """Distinct colours, at least 80 apart on some channel (far beyond COLOR_TOLERANCE)."""
    levels = (30, 110, 190)
    return [(r, g, b) for r in levels for g in levels for b in levels if not r == g == b]


def _make_unreadable(path: Path, data: bytes) -> str | None:
    """Create ``path`` so that reading it raises PermissionError; None, or why it cannot be
    done here. Non-root: a file with mode 000. Root (permissions do not stop it): a symlink
    to a write-only kernel file, after checking that reading it really fails."""
    if os.geteuid() != 0:
        path.write_bytes(data)
        path.chmod(0)
        return None
    try:
        with open(WRITE_ONLY_FILE, "rb"):
            pass
    except PermissionError:
        path.symlink_to(WRITE_ONLY_FILE)
        return None
    except OSError:
        pass
    return (f"unreadable file: running as root and {WRITE_ONLY_FILE} is readable or absent, "
            "so no file refuses to be read here")


def write_corpus(root: str | Path, unreadable: bool = True) -> Corpus:
    """Write the corpus under ``root`` (created; must not exist yet) and return it.

    ``unreadable=False`` leaves out the permission case (for consumers running as another
    user, or copying the tree).
    """
    root = Path(root)
    root.mkdir(parents=True)
    for name in CLASSES:
        (root / name).mkdir()
    colors = iter(_palette())
    cases: list[Case] = []
    notes: list[str] = []

    def good(cls: str, name: str, kind: str, data_for, gray: int | None = None) -> None:
        color = (gray, gray, gray) if gray is not None else next(colors)
        (root / cls / name).write_bytes(data_for(color))
        cases.append(Case(root / cls / name, kind, label=CLASSES.index(cls), color=color))

    def bad(cls: str, name: str, kind: str, data: bytes | None, reason: str) -> None:
        if data is not None:
            (root / cls / name).write_bytes(data)
        cases.append(Case(root / cls / name, kind, reason=reason))

    jpeg = lambda mode: lambda c: _encoded(_solid(c, mode=mode), "JPEG", quality=95)  # noqa: E731
    # class "ant": plain JPEGs, awkward but usable formats, broken files
    good("ant", "plain_0.jpg", "RGB JPEG", jpeg("RGB"))
    good("ant", "plain_1.jpg", "RGB JPEG", jpeg("RGB"))
    good("ant", "png_named.jpg", "PNG named .jpg", lambda c: _encoded(_solid(c), "PNG"))
    good("ant", "cmyk.jpg", "CMYK JPEG", jpeg("CMYK"))
    good("ant", "gray.jpg", "grayscale JPEG", jpeg("L"), gray=150)
    good("ant", "one_pixel.jpg", "1x1 JPEG",
         lambda c: _encoded(_solid(c, size=(1, 1)), "JPEG", quality=95))
    bad("ant", "zero_byte.jpg", "zero-byte file", b"", r"zero-byte")
    noise = _noise_jpeg()
    bad("ant", "truncated.jpg", "truncated JPEG", noise[: len(noise) // 2], r"truncated")
    bad("ant", "notes.txt", "text file", b"not an image\n", r"not an image file")
    bad("ant", ".DS_Store", "macOS folder metadata", b"\x00\x00\x00\x01Bud1" + bytes(32),
        r"not an image file")
    (root / "ant" / "loop").symlink_to(".", target_is_directory=True)
    bad("ant", "loop", "directory symlink to its own folder", None, r"symlink loop")

    # class "bee": alpha and palette images, and the hostile ones
    good("bee", "plain_0.jpg", "RGB JPEG", jpeg("RGB"))
    good("bee", "rgba.png", "RGBA PNG (opaque alpha)",
         lambda c: _encoded(_solid(c, mode="RGBA"), "PNG"))
    good("bee", "palette.png", "palette PNG", lambda c: _palette_png(c, transparency=False))
    good("bee", "palette_trns.png", "palette PNG with a transparent entry",
         lambda c: _palette_png(c, transparency=True))
    bad("bee", "random_bytes.jpg", "random bytes named .jpg",
        np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        r"cannot identify image")
    warn_side, error_side = _bomb_sides()
    bad("bee", "bomb.png", "decompression bomb (over twice PIL's limit)",
        bomb_png(error_side, error_side), r"decompression ?bomb")
    bad("bee", "bomb_warn.png", "decompression bomb (over PIL's limit)",
        bomb_png(warn_side, warn_side), r"decompression ?bomb")
    (root / "bee" / "link_a.jpg").symlink_to("link_b.jpg")
    (root / "bee" / "link_b.jpg").symlink_to("link_a.jpg")
    bad("bee", "link_a.jpg", "file symlink loop", None, r"symbolic links|symlink loop")
    bad("bee", "link_b.jpg", "file symlink loop", None, r"symbolic links|symlink loop")
    if unreadable:
        why = _make_unreadable(root / "bee" / "unreadable.jpg", jpeg("RGB")((1, 2, 3)))
        if why is None:
            bad("bee", "unreadable.jpg", "unreadable file", None, r"permission denied")
        else:
            notes.append(why)

    # class "cow": nothing at all; class "dog": good images only
    cases.append(Case(root / EMPTY_CLASS, "empty class folder", reason=r"empty class folder"))
    good("dog", "plain_0.jpg", "RGB JPEG", jpeg("RGB"))
    good("dog", "plain_1.jpg", "RGB JPEG", jpeg("RGB"))
    return Corpus(root, list(CLASSES), cases, notes)
