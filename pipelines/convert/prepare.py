"""One pass per input image, in a converter's worker: read, inspect, convert only if needed.

``prepare_image`` reads the file once and decides from the JPEG header alone
(``jpeg_header.parse_jpeg``) whether the bytes can be stored as they are: a complete,
upright, 8-bit Huffman YCbCr JPEG whose longer side is within ``max_side`` goes through byte
for byte, with no decode at all. Anything else is decoded once by PIL and, when usable,
converted to RGB (transparency composited on white), turned upright by its EXIF orientation,
shrunk to ``max_side`` (bicubic) and re-encoded at ``quality``. ``check="decode"`` also
decodes the pass-through JPEGs once, to reject a file whose entropy-coded data is damaged
while its structure is intact (the default leaves that to ``--verify``, which decodes every
stored image with the format's own reader).

EXIF orientation is applied here, at conversion time: the stored bytes are upright and carry
no orientation, so every executor (PIL, FFCV, DALI) sees the same pixels.

The simple twin is ``common.encode_jpeg`` (always a full decode); tests check both reach
the same verdict and the same bytes.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from ..formats.jpeg_header import parse_jpeg
from ..images import describe_error
from .common import EncodeError


@dataclass(frozen=True)
class Prepared:
    """A usable image: its stored form and size; ``how`` says what was done to it."""

    data: bytes            # JPEG bytes, or raw RGB bytes when ``raw`` was asked for
    width: int
    height: int
    how: str               # "passed" (bytes as read), "reencoded", "raw"


def read_input(path: str) -> bytes:
    """The file's bytes; EncodeError with the reason when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise EncodeError("permission denied") from None
    except OSError as e:
        raise EncodeError(f"unreadable ({e.strerror or e})") from None
    if not raw:
        raise EncodeError("zero-byte file")
    return raw


def decode_rgb(raw: bytes, max_side: int | None = None) -> Image.Image:
    """Decode fully to an upright RGB image (alpha composited on white); EncodeError on any
    unusable input, decompression bombs included. With ``max_side``, a JPEG at least twice
    that large is decoded at a reduced DCT scale (1/2, 1/4 or 1/8, libjpeg's draft mode)
    that still leaves its longer side >= ``max_side``: much cheaper than a full decode, and
    the image is shrunk to ``max_side`` afterwards anyway."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                w, h = im.size
                if max_side and im.format == "JPEG" and max(w, h) >= 2 * max_side:
                    s = max_side / max(w, h)
                    im.draft(im.mode, (max(1, int(w * s)), max(1, int(h * s))))
                im.load()
                img = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P"
                                                         and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    out = Image.new("RGB", rgba.size, (255, 255, 255))
                    out.paste(rgba, mask=rgba.getchannel("A"))
                    return out
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EncodeError(f"decompression bomb: {e}") from None
    except Exception as e:  # hostile input raises many types
        raise EncodeError(f"not a decodable image ({describe_error(e)})") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block: treat as upright
        return 1


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    s = max_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def to_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def prepare_image(path: str, max_side: int, quality: int, raw: bool = False,
                  check: str = "header") -> Prepared:
    """Read ``path`` once and return what to store; EncodeError names the reason it cannot."""
    data = read_input(path)
    if not raw:
        info = parse_jpeg(data)
        if (info is not None and info.storable_as_is and max(info.width, info.height) <= max_side
                and info.width * info.height <= (Image.MAX_IMAGE_PIXELS or 1 << 62)):
            if check == "decode":
                decode_rgb(data)
            return Prepared(data, info.width, info.height, "passed")
    img = shrink(decode_rgb(data, max_side), max_side)
    w, h = img.size
    if raw:
        return Prepared(img.tobytes(), w, h, "raw")
    return Prepared(to_jpeg(img, quality), w, h, "reencoded")


def describe_failure(e: BaseException) -> str:
    """The manifest reason of an exception raised while preparing an input."""
    if isinstance(e, EncodeError):
        return str(e)
    if isinstance(e, OSError):
        return f"unreadable ({e.strerror or e})"
    return f"conversion failed ({describe_error(e)})"

