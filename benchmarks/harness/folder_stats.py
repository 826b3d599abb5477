"""What a folder of JPEGs looks like to a pipeline: sizes, bytes, quality, decode time.

Every pipeline and conversion result names its data with these statistics, because the
figures depend on them: decode time grows with the bytes (entropy decoding) and the pixels.
ImageNet's training set, the data that counts: median 500x375, mean ~110 KB, quality ~90.
"""
from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SMALL_SIDE = 250    # longer side at most this: a small outlier
LARGE_SIDE = 1000   # longer side at least this: a large outlier
TYPICAL_SIDE = 500  # ImageNet's most common longer side

# The IJG / Annex K luminance quantisation table, in zig-zag-free row order as PIL gives it.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
         69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55,
         64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100,
         103, 99)


@dataclass(frozen=True)
class FolderStats:
    """Statistics of the image files under a folder (sizes in px, bytes, milliseconds).

    decode_ms_*: PIL decode to RGB of in-memory bytes on one core, over ``decode_sample``
    files spread through the folder (best of 5 per file); ``decode_ms_typical`` is the
    median over the sampled files whose longer side is 500 px (NaN when there are none).
    """

    images: int
    classes: int
    median_width: float
    median_height: float
    mean_bytes: float
    median_bytes: float
    quality: int            # median estimated JPEG quality of the decode sample (0: not JPEG)
    small: int              # files with longer side <= SMALL_SIDE
    large: int              # files with longer side >= LARGE_SIDE
    max_side: int
    decode_sample: int
    decode_ms_mean: float
    decode_ms_median: float
    decode_ms_typical: float

    def summary(self) -> str:
        return (f"{self.images} images in {self.classes} classes, median "
                f"{self.median_width:.0f}x{self.median_height:.0f} px, mean "
                f"{self.mean_bytes / 1e3:.0f} KB (median {self.median_bytes / 1e3:.0f} KB), "
                f"JPEG quality ~{self.quality}, {self.small} small (<= {SMALL_SIDE} px) and "
                f"{self.large} large (>= {LARGE_SIDE} px, up to {self.max_side}) outliers; PIL "
                f"decode {self.decode_ms_mean:.2f} ms/image mean"
                + ("" if math.isnan(self.decode_ms_typical) else
                   f", {self.decode_ms_typical:.2f} ms at {TYPICAL_SIDE} px") + ", one core")

    def as_dict(self, prefix: str = "data_") -> dict:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def _ijg_tables() -> dict[int, list[int]]:
    """quality -> the sorted IJG luminance table libjpeg scales to that quality."""
    out = {}
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        out[q] = sorted(min(255, max(1, (v * scale + 50) // 100)) for v in _LUMA)
    return out


_TABLES = _ijg_tables()


def estimate_quality(im: Image.Image) -> int:
    """The IJG quality whose luminance table is closest to the file's (0 if not a JPEG).

    Compares sorted tables, so the coefficient order PIL reports does not matter."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return 0
    table = sorted(tables[0])
    return min(_TABLES, key=lambda q: sum(abs(a - b) for a, b in zip(_TABLES[q], table)))


def image_files(root: str | Path) -> list[Path]:
    """Image files of an ImageFolder tree (``root/<class>/<file>``), sorted."""
    return sorted(p for p in Path(root).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)


def decode_times(paths: list[Path], rounds: int = 5) -> list[float]:
    """Seconds to decode each file to RGB with PIL from bytes in memory, best of ``rounds``."""
    out = []
    for path in paths:
        data = path.read_bytes()
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB")
            best = min(best, time.perf_counter() - t0)
        out.append(best)
    return out


def describe_folder(root: str | Path, decode_sample: int = 256,
                    max_files: int | None = None) -> FolderStats:
    """Statistics of the images of an ImageFolder tree: counts of every file; sizes, bytes
    and quality from the headers of every file (or of ``max_files`` spread evenly); decode
    time on ``decode_sample`` of them."""
    files = image_files(root)
    if not files:
        raise FileNotFoundError(f"no image files under {root}/<class>/")
    total, classes = len(files), len({p.parent for p in files})
    if max_files and len(files) > max_files:
        files = files[:: -(-len(files) // max_files)]
    widths, heights, sizes = [], [], []
    for path in files:
        with Image.open(path) as im:
            widths.append(im.width)
            heights.append(im.height)
        sizes.append(path.stat().st_size)
    longest = [max(w, h) for w, h in zip(widths, heights)]
    step = max(1, len(files) // decode_sample)
    picked = list(range(0, len(files), step))[:decode_sample]
    qualities = []
    for i in picked:
        with Image.open(files[i]) as im:
            qualities.append(estimate_quality(im))
    times = decode_times([files[i] for i in picked])
    typical = [t for i, t in zip(picked, times) if longest[i] == TYPICAL_SIDE]
    return FolderStats(
        images=total, classes=classes,
        median_width=statistics.median(widths), median_height=statistics.median(heights),
        mean_bytes=statistics.fmean(sizes), median_bytes=statistics.median(sizes),
        quality=int(statistics.median(qualities)),
        small=sum(s <= SMALL_SIDE for s in longest), large=sum(s >= LARGE_SIDE for s in longest),
        max_side=max(longest), decode_sample=len(times),
        decode_ms_mean=statistics.fmean(times) * 1e3,
        decode_ms_median=statistics.median(times) * 1e3,
        decode_ms_typical=statistics.median(typical) * 1e3 if typical else float("nan"))
