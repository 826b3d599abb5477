"""Pieces every converter shares: its options and image re-encoding. The manifest is
``pipelines.formats.manifest`` (the backends read it too)."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..images import describe_error


CHECKS = ("header", "decode")  # how a pass-through JPEG is checked (``prepare``)


@dataclass(frozen=True)
class ConvertConfig:
    """Options of ``dino-convert`` (shared by every output format)."""

    src: Path
    dst: Path
    format: str = "wds"          # "wds" (tar shards + DALI index files) or "ffcv" (.beton)
    max_side: int = 500          # re-encode images whose longer side exceeds this
    jpeg_quality: int = 90
    workers: int = max(1, (os.cpu_count() or 1))
    shard_size: int = 1000       # images per tar shard (wds)
    write_mode: str = "jpg"      # ffcv: raw | jpg | proportion
    compress_probability: float = 0.5  # ffcv, write_mode=proportion
    strict: bool = False         # exit non-zero when any file was skipped
    progress: bool = True
    check: str = "header"        # pass-through JPEGs: "header" (no decode) or "decode"
    labels: Path | None = None   # flat folder + labels file (CSV filename,class or
                                 # ImageNet's LOC_val_solution.csv)
    classes_from: Path | None = None  # class list of the training split (folder/manifest)
    unlabeled: bool | None = None  # None: auto (images directly in src); True: forced
    verify: bool = True          # read the output back with the format's reader at the end

    def check_options(self) -> None:
        """ValueError naming the first option, among those every format uses, that is out of
        range (each converter adds its own)."""
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {self.check!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.max_side < 16:
            raise ValueError(f"max_side must be >= 16, got {self.max_side}")


class EncodeError(Exception):
    """An input image that cannot be converted; the message is the reason."""


def encode_jpeg(path: str | Path, max_side: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """Decode ``path`` fully and return (JPEG bytes, (width, height)) of an RGB image.

    The simple twin of ``prepare.prepare_image`` (which decides from the header alone).

    A JPEG that is already RGB and small enough is passed through byte for byte (no
    generation loss); anything else (other formats, CMYK, grayscale, alpha, palette, too
    large, EXIF-rotated) is converted to RGB, turned upright, shrunk so its longer side is
    at most ``max_side`` (bicubic) and re-encoded. Raises EncodeError with the reason for
    any unusable file.
    """
    raw = Path(path).read_bytes() if os.access(path, os.R_OK) else None
    if raw is None:
        raise EncodeError("permission denied")
    if not raw:
        raise EncodeError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                fmt, mode = im.format, im.mode
                im.load()
                img = im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EncodeError(f"decompression bomb: {e}") from None
    except Exception as e:  # hostile input raises many types
        raise EncodeError(f"not a decodable image ({describe_error(e)})") from None
    orientation = int(img.getexif().get(0x0112, 1) or 1)
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    w, h = img.size
    if fmt == "JPEG" and mode == "RGB" and max(w, h) <= max_side and orientation == 1:
        return raw, (w, h)
    mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    else:
        img = img.convert("RGB")
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), img.size


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
