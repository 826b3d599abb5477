"""A flat image folder plus a labels file: ImageNet's validation split as it ships.

The labels file is a CSV of ``filename,class`` rows, or ImageNet's ``LOC_val_solution.csv``
(header ``ImageId,PredictionString``: the class is the first token of the prediction string
and ``ImageId`` is the file name without its extension). Labels are indices into a given
class list, normally the training split's, so train and val agree; a class the list lacks
is an error naming the classes. Rows naming a missing file and images without a row are
reported as ``Skipped`` lines, never fatal.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .folder import IMAGE_EXTENSIONS, DatasetError, FolderScan, Skipped

LABELS_FILE_NAMES = ("LOC_val_solution.csv", "val_labels.csv", "val.csv")


def read_labels_file(path: str | Path) -> dict[str, str]:
    """``{file name or stem: class name}``; ValueError naming the file and line when a row is
    malformed."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"labels file {path} is empty")
    first = [c.strip().lower() for c in rows[0]][:1]
    start = 1 if first in (["imageid"], ["filename"]) else 0
    out: dict[str, str] = {}
    for no, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].split():
            raise ValueError(f"labels file {path}, line {no}: expected 'filename,class', "
                             f"got {','.join(row)!r}")
        out[row[0].strip()] = row[1].split()[0]
    return out


def require_known_classes(found: list[str], classes: list[str], where: str) -> None:
    """DatasetError naming the classes of ``found`` (seen in ``where``) that ``classes``, the
    training split's list, lacks: converting or evaluating val against the wrong train split
    must not pass silently."""
    unknown = sorted(set(found) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more"
                                           if len(unknown) > 10 else "")
        raise DatasetError(f"{where} names {len(unknown)} class(es) the training split does "
                           f"not have: {shown}")


def find_labels_file(split_dir: Path) -> Path | None:
    """A labels file for the flat folder ``split_dir``: next to it or inside it."""
    for folder in (split_dir.parent, split_dir):
        for name in LABELS_FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def scan_labelled_flat(root: str | Path, labels_file: str | Path,
                       classes: list[str] | None = None) -> FolderScan:
    """The images of the flat folder ``root`` labelled by ``labels_file``; with ``classes``
    (the training split's list) labels index into it, else into the sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a directory: {root}")
    labels = read_labels_file(labels_file)
    files = sorted(p for p in root.iterdir() if p.is_file())
    by_key = {p.stem: p for p in files} | {p.name: p for p in files}
    names = sorted(set(labels.values()))
    if classes is not None:
        require_known_classes(names, classes, f"labels file {labels_file}")
        names = list(classes)
    index = {c: i for i, c in enumerate(names)}
    samples, skipped, used = [], [], set()
    for key, cls in labels.items():
        p = by_key.get(key)
        if p is None:
            skipped.append(Skipped(str(root / key), f"named in the labels file {labels_file} "
                                   f"but missing from {root}"))
            continue
        used.add(p)
        samples.append((str(p), index[cls]))
    for p in files:
        if p not in used:
            why = ("no row in the labels file" if p.suffix.lower() in IMAGE_EXTENSIONS
                   else f"not an image file (extension '{p.suffix}')")
            skipped.append(Skipped(str(p), why))
    if not samples:
        raise DatasetError(f"no labelled images under {root} ({len(skipped)} files skipped)")
    return FolderScan(root, names, sorted(samples), skipped)
