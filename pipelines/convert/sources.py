"""What a conversion reads: the input files, their labels and the class list.

Three layouts:

- ImageFolder ``SRC/<class>/<image>`` (any nesting below a class): labels are the indices
  of the sorted class-folder names.
- A flat folder plus a labels file (``--labels``), as ImageNet ships its validation split:
  a CSV of ``filename,class`` rows, or ImageNet's ``LOC_val_solution.csv`` (header
  ``ImageId,PredictionString``; the class is the first token of the prediction string and
  ``ImageId`` is the file name without its extension). With ``--classes-from`` (the
  training split's folder, or its converted ``manifest.json`` or output folder) labels
  are indices into the training split's classes, so train and val agree.
- Unlabeled (``--unlabeled``, or auto-detected: image files directly in SRC): every image
  at any depth, label -1, no classes.

Every unusable entry becomes one ``{"path", "reason"}`` line: a labels row naming a missing
file, a file with no labels row, a class unknown to the training split (also an error that
names the classes when ``--classes-from`` is given: converting val against the wrong train
split must not pass silently).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..folder import DatasetError, Skipped, scan_image_folder
from ..labels_file import require_known_classes, scan_labelled_flat
from .common import ConvertConfig
from .listing import Listing, ListingBuilder


@dataclass
class Inputs:
    """What a conversion reads: ``samples`` in conversion order (compact: ``Listing``),
    the class list, and the files the scan already left out."""

    classes: list[str]
    samples: Listing
    skipped: list[dict] = field(default_factory=list)
    labelled: bool = True


def load_class_list(source: str | Path) -> list[str]:
    """The class list of a training split: an ImageFolder, a ``manifest.json`` or a
    converted output folder holding one."""
    source = Path(source)
    manifest = source if source.suffix == ".json" else source / "manifest.json"
    if manifest.is_file():
        classes = json.loads(manifest.read_text()).get("classes") or []
        if not classes:
            raise DatasetError(f"{manifest} names no classes (an unlabeled dataset?)")
        return list(classes)
    if source.is_dir():
        scan = scan_image_folder(source, unlabeled=False)
        return scan.classes
    raise DatasetError(f"--classes-from {source}: not an image folder, a manifest.json, or "
                       "a converted dataset folder")


def _lines(skipped: list[Skipped]) -> list[dict]:
    """Skipped files as the manifest's ``{"path", "reason"}`` lines."""
    return [{"path": s.path, "reason": s.reason} for s in skipped]


def _labelled_flat(cfg: ConvertConfig) -> Inputs:
    classes = load_class_list(cfg.classes_from) if cfg.classes_from else None
    scan = scan_labelled_flat(cfg.src, cfg.labels, classes)  # a val split: a list is fine
    return Inputs(scan.classes, Listing.from_samples(scan.samples), _lines(scan.skipped))


def label_counts(labels: Iterable[int], dropped: Iterable[int] = ()) -> dict[str, int]:
    """Stored samples per label (for --verify), in order of first appearance: ``labels``
    (one per input, in input order) less the inputs at the indices ``dropped`` (those the
    conversion skipped)."""
    gone = set(dropped)
    counts: dict[str, int] = {}
    for i, label in enumerate(labels):
        if i not in gone:
            counts[str(label)] = counts.get(str(label), 0) + 1
    return counts


def release_free_heap() -> bool:
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``; False
    where that is not glibc). A folder scan allocates and frees a directory's entries and
    paths at a time among the listing's growing buffers, and glibc keeps what was freed:
    ~1.5 MB per 100k images that the converter would otherwise hold to the end."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def list_inputs(cfg: ConvertConfig) -> Inputs:
    """The inputs of a conversion, in a fixed order; raises DatasetError when none."""
    if cfg.labels is not None:
        if cfg.unlabeled:
            raise ValueError("--labels and --unlabeled contradict each other")
        return _labelled_flat(cfg)
    builder = ListingBuilder()
    scan = scan_image_folder(cfg.src, unlabeled=cfg.unlabeled, samples=builder)
    listing, skipped = builder.build(), _lines(scan.skipped)
    release_free_heap()
    if not scan.labelled:
        return Inputs([], listing, skipped, labelled=False)
    if cfg.classes_from:
        train = load_class_list(cfg.classes_from)
        require_known_classes(scan.classes, train,
                              f"{cfg.src} (class folders; training split {cfg.classes_from})")
        return Inputs(train, listing.relabel([train.index(c) for c in scan.classes]), skipped)
    return Inputs(scan.classes, listing, skipped)
