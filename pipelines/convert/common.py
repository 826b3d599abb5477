"""Pieces every converter shares: its options, image re-encoding, and the manifest."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps


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


_BUFFER_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def describe_error(e: BaseException) -> str:
    """``Type: message`` of a decode error, without the in-memory buffer's address that PIL
    puts in it, so reasons are readable and identical from run to run."""
    return f"{type(e).__name__}: {_BUFFER_REPR.sub('', str(e))}"


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


@dataclass
class Manifest:
    """What a conversion produced: written last, so its presence marks a finished dataset."""

    format: str
    classes: list[str]
    num_samples: int = 0
    shards: list[dict] = field(default_factory=list)   # {"name", "count", "sha256", ...}
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    options: dict = field(default_factory=dict)
    labelled: bool = True      # False: an unlabeled folder, every label is -1
    stored: dict = field(default_factory=dict)  # {"passed"|"reencoded"|"raw": count}
    seconds: float = field(default=0.0, compare=False)  # wall time (not saved)
    label_counts: dict = field(default_factory=dict)  # {"label": stored samples}

    def save(self, path: str | Path) -> None:
        """Write it atomically; the wall time stays out, so the same input and options
        give a byte-identical manifest (an interrupted run resumes to the same files)."""
        content = {k: v for k, v in asdict(self).items() if k != "seconds"}
        atomic_write_bytes(path, json.dumps(content, indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no manifest at {path}: not a converted dataset, or the "
                                    "conversion did not finish (run dino-convert again)")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"manifest {path} is corrupt: {e}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never half.

    A temporary file in the same directory is written, fsync'ed and renamed over ``path``;
    the directory is fsync'ed so the rename itself is durable. A failure leaves no temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (after a rename in it, to make the rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
