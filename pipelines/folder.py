"""Scanning ImageFolder trees (``root/<class>/<image>``) without ever failing on bad files.

Every executor and converter that reads a raw folder starts here. Good images come back as
``(path, label)`` samples with labels from the sorted class-folder names; everything else
(non-image files, unreadable files, symlink loops, empty class folders and, with
``verify=True``, files that do not decode) comes back as a ``Skipped`` line naming the file and
the reason, so a caller can report it and carry on.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

log = logging.getLogger(__name__)

UNLABELED = -1  # the label of every sample of an unlabeled folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_LOGGED_SKIPS = 50


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing path, no classes, no images)."""


class SampleSink(Protocol):
    """Where a scan puts its ``(path, label)`` pairs: a list, or a compact collector."""

    def append(self, sample: tuple[str, int]) -> None: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class FolderScan:
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]] | SampleSink  # a list unless the caller passed another
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def check_image(path: str | Path) -> str | None:
    """Decode ``path`` fully with PIL; return None if it is a usable image, else the reason."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                w, h = im.size
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}"
    except Image.DecompressionBombWarning as e:
        return f"decompression bomb: {e}"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        if Path(path).stat().st_size == 0:
            return "zero-byte file"
        return f"not a decodable image ({type(e).__name__}: {e})"
    except Exception as e:  # PIL raises a zoo of types on hostile input
        return f"not a decodable image ({type(e).__name__}: {e})"
    if w < 1 or h < 1:
        return f"empty image ({w}x{h})"
    return None


def _walk_files(class_dir: Path, skipped: list[Skipped]) -> Iterator[Path]:
    """All files below ``class_dir`` in sorted order, one at a time (no list of the whole
    tree), following symlinks but never around a loop."""
    seen: set[str] = set()

    def visit(d: Path) -> Iterator[Path]:
        try:
            real = os.path.realpath(d)
        except OSError as e:
            skipped.append(Skipped(str(d), f"unresolvable path ({e})"))
            return
        if real in seen:
            skipped.append(Skipped(str(d), "symlink loop (directory already visited)"))
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(str(d), f"unreadable directory ({e.strerror or e})"))
            return
        for e in entries:
            p = Path(e.path)
            try:
                if e.is_dir():
                    yield from visit(p)
                elif e.is_file():
                    yield p
                else:
                    skipped.append(Skipped(str(p), "not a regular file (broken link or special)"))
            except OSError as err:
                skipped.append(Skipped(str(p), f"unreadable ({err.strerror or err})"))

    return visit(class_dir)


def _collect(top: Path, label: int, samples: SampleSink, skipped: list[Skipped],
             verify: bool) -> None:
    """Append ``(path, label)`` of every usable file below ``top`` to ``samples``; what is
    not usable goes to ``skipped``: the walk's lines first, then the files' (the order of a
    whole walk followed by the checks, kept while the walk streams)."""
    walk_skipped: list[Skipped] = []
    file_skipped: list[Skipped] = []
    for f in _walk_files(top, walk_skipped):
        if _accept(f, file_skipped, verify):
            samples.append((str(f), label))
    skipped += walk_skipped + file_skipped


def is_unlabeled_folder(root: Path) -> bool:
    """Auto-detection: image files directly in ``root`` (an ImageFolder never has any) make
    it an unlabeled folder; class folders alone make it an ImageFolder."""
    try:
        return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
                   for e in os.scandir(root))
    except OSError:
        return False


def _accept(f: Path, skipped: list[Skipped], verify: bool) -> bool:
    """Whether file ``f`` is a usable image candidate; if not, why goes to ``skipped``."""
    if f.suffix.lower() not in IMAGE_EXTENSIONS:
        skipped.append(Skipped(str(f), f"not an image file (extension '{f.suffix}')"))
        return False
    if not os.access(f, os.R_OK):
        skipped.append(Skipped(str(f), "permission denied"))
        return False
    if f.stat().st_size == 0:
        skipped.append(Skipped(str(f), "zero-byte file"))
        return False
    if verify:
        reason = check_image(f)
        if reason is not None:
            skipped.append(Skipped(str(f), reason))
            return False
    return True


def scan_unlabeled(root: Path, verify: bool = False,
                   samples: SampleSink | None = None) -> FolderScan:
    """Every image below ``root`` at any depth, in sorted path order, label -1, no classes
    (``samples``: see ``scan_image_folder``)."""
    skipped: list[Skipped] = []
    samples = [] if samples is None else samples
    _collect(root, UNLABELED, samples, skipped, verify)
    if not samples:
        raise DatasetError(f"no usable images under {root} ({len(skipped)} files skipped)")
    return FolderScan(root, [], samples, skipped)


def scan_image_folder(root: str | Path, verify: bool = False, unlabeled: bool | None = None,
                      samples: SampleSink | None = None) -> FolderScan:
    """Scan ``root/<class>/...`` (or, unlabeled, every image below ``root``; ``None``:
    auto-detected by ``is_unlabeled_folder``). Raises DatasetError only when nothing usable
    is there.

    ``samples`` receives the ``(path, label)`` pairs (``append`` and ``len``; a new list by
    default) and becomes the scan's ``samples``: a converter passes a compact collector
    (``convert.listing.ListingBuilder``) so no per-image object outlives the scan."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a directory: {root}")
    if unlabeled or (unlabeled is None and is_unlabeled_folder(root)):
        return scan_unlabeled(root, verify, samples)
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not class_dirs:
        raise DatasetError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    classes = [p.name for p in class_dirs]
    samples = [] if samples is None else samples
    skipped: list[Skipped] = []
    for label, cdir in enumerate(class_dirs):
        n_before = len(samples)
        _collect(cdir, label, samples, skipped, verify)
        if len(samples) == n_before:
            skipped.append(Skipped(str(cdir), "empty class folder (no usable images)"))
    if not samples:
        raise DatasetError(f"no usable images under {root} ({len(skipped)} files skipped)")
    return FolderScan(root, classes, samples, skipped)


def report_skipped(skipped: list[Skipped]) -> None:
    """Log what a folder scan (or a conversion) left out: one line per file, up to
    MAX_LOGGED_SKIPS."""
    for s in skipped[:MAX_LOGGED_SKIPS]:
        log.warning("%s", s)
    if len(skipped) > MAX_LOGGED_SKIPS:
        log.warning("... and %d more skipped files (see .skipped)", len(skipped) - MAX_LOGGED_SKIPS)
