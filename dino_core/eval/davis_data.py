"""The DAVIS-2017 folder layout: sequences, frames, indexed annotation PNGs, the palette.

Layout (as DAVIS ships it; the user downloads it)::

    ROOT/JPEGImages/480p/<sequence>/00000.jpg ...
    ROOT/Annotations/480p/<sequence>/00000.png ...   indexed PNGs: 0 background, k object k,
                                                      255 void
    ROOT/ImageSets/2017/val.txt                        one sequence name per line

A sequence needs its first frame's annotation (the given mask). When every frame has an
annotation the sequence is scored; when only the first has one (a test-dev style sequence)
its masks are written and not scored; any other gap is an error naming the first missing
file, as is a frame folder or annotation that is missing or unreadable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.folder import DatasetError

FRAMES = "JPEGImages"
ANNOTATIONS = "Annotations"
SPLIT_FILE = "ImageSets/2017/val.txt"


@dataclass(frozen=True)
class VideoSequence:
    """One sequence: its frames in order and the annotation of each (or of the first only)."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]

    @property
    def scored(self) -> bool:
        """Whether every frame has an annotation (else only the first does)."""
        return len(self.annotations) == len(self.frames)


def read_split(path: Path) -> list[str]:
    """Sequence names of a split file (one per line; blank lines skipped)."""
    if not path.is_file():
        raise DatasetError(f"split file {path} is missing; give --split-file FILE or "
                           "--sequences NAME ...")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split file {path} names no sequence")
    return names


def open_sequence(root: Path, name: str, resolution: str = "480p") -> VideoSequence:
    """The frames and annotations of sequence ``name`` under ``root``, checked."""
    frame_dir = root / FRAMES / resolution / name
    ann_dir = root / ANNOTATIONS / resolution / name
    if not frame_dir.is_dir():
        raise DatasetError(f"sequence {name}: frame folder {frame_dir} is missing")
    frames = tuple(sorted(frame_dir.glob("*.jpg")))
    if len(frames) < 2:
        raise DatasetError(f"sequence {name}: {frame_dir} holds {len(frames)} .jpg frame(s); "
                           "propagation needs at least 2")
    annotations = tuple(ann_dir / (f.stem + ".png") for f in frames)
    present = [a.is_file() for a in annotations]
    if not present[0]:
        raise DatasetError(f"sequence {name} has no annotation of its first frame: "
                           f"{annotations[0]} is missing")
    if all(present):
        return VideoSequence(name, frames, annotations)
    if not any(present[1:]):
        return VideoSequence(name, frames, annotations[:1])
    missing = annotations[present.index(False)]
    raise DatasetError(f"sequence {name}: annotation {missing} is missing (a sequence is "
                       "annotated on every frame, or on its first frame only)")


def open_davis(root: str | Path, sequences: list[str] | None = None,
               split_file: str | Path | None = None,
               resolution: str = "480p") -> list[VideoSequence]:
    """The sequences to segment: ``sequences`` if given, else those of the split file
    (default ROOT/ImageSets/2017/val.txt)."""
    root = Path(root)
    if not (root / FRAMES / resolution).is_dir():
        raise DatasetError(f"DAVIS folder {root} must hold {FRAMES}/{resolution}/<sequence>/ "
                           f"and {ANNOTATIONS}/{resolution}/<sequence>/; "
                           f"{root / FRAMES / resolution} is missing")
    if not sequences:
        sequences = read_split(Path(split_file) if split_file else root / SPLIT_FILE)
    return [open_sequence(root, name, resolution) for name in sequences]


def davis_palette() -> np.ndarray:
    """[256, 3] uint8: DAVIS's (PASCAL VOC's) colour map; index i's bits 0/1/2, 3/4/5, ...
    go to the high bits of red/green/blue (1 -> (128, 0, 0), 2 -> (0, 128, 0))."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        palette[i] = rgb
    return palette


def read_annotation(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels [H, W] uint8, palette [256, 3] or None) of an indexed (or grayscale) PNG."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"annotation {path} is a {im.mode} image; DAVIS annotations "
                                   "are indexed PNGs (one palette index per object)")
            labels = np.array(im, dtype=np.uint8)
            raw = im.getpalette() if im.mode == "P" else None
    except DatasetError:
        raise
    except Exception as e:  # PIL raises many types on a bad file
        raise DatasetError(f"annotation {path} is unreadable ({type(e).__name__}: {e})") from None
    palette = None
    if raw is not None:
        palette = np.zeros((256, 3), dtype=np.uint8)
        flat = np.asarray(raw[:768], dtype=np.uint8).reshape(-1, 3)
        palette[:len(flat)] = flat
    return labels, palette


def read_frame(path: Path) -> Image.Image:
    """The frame at ``path`` as RGB, or a DatasetError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types on a bad file
        raise DatasetError(f"frame {path} is unreadable ({type(e).__name__}: {e})") from None


def write_indexed_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Save labels [H, W] uint8 as a palette PNG (what the DAVIS tools read)."""
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; the palette makes it P
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
