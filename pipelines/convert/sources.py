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

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..folder import IMAGE_EXTENSIONS, DatasetError, scan_image_folder
from .common import ConvertConfig


@dataclass
class Inputs:
    classes: list[str]
    samples: list[tuple[str, int]]
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


def read_labels_file(path: str | Path) -> dict[str, str]:
    """``{file name or stem: class name}`` from a ``filename,class`` CSV or ImageNet's
    ``LOC_val_solution.csv``; ValueError naming the file and line when malformed."""
    path = Path(path)
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"labels file {path} is empty")
    start = 1 if [c.strip().lower() for c in rows[0]][:1] in (["imageid"], ["filename"]) else 0
    for no, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"labels file {path}, line {no}: expected 'filename,class', "
                             f"got {','.join(row)!r}")
        out[row[0].strip()] = row[1].split()[0]
    return out


def _labelled_flat(cfg: ConvertConfig) -> Inputs:
    src = Path(cfg.src)
    labels = read_labels_file(cfg.labels)
    files = sorted(p for p in src.iterdir() if p.is_file())
    by_name = {p.name: p for p in files} | {p.stem: p for p in files}
    classes = (load_class_list(cfg.classes_from) if cfg.classes_from
               else sorted(set(labels.values())))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels.values()) - set(index))
    if unknown and cfg.classes_from:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more"
                                           if len(unknown) > 10 else "")
        raise DatasetError(f"labels file {cfg.labels} names {len(unknown)} class(es) the "
                           f"training split ({cfg.classes_from}) does not have: {shown}")
    samples, skipped, used = [], [], set()
    for key, cls in labels.items():
        p = by_name.get(key)
        if p is None:
            skipped.append({"path": str(src / key), "reason": f"named in the labels file "
                            f"{cfg.labels} but missing from {src}"})
            continue
        used.add(p)
        samples.append((str(p), index[cls]))
    for p in files:
        if p not in used:
            why = ("no row in the labels file" if p.suffix.lower() in IMAGE_EXTENSIONS
                   else f"not an image file (extension '{p.suffix}')")
            skipped.append({"path": str(p), "reason": why})
    samples.sort()
    if not samples:
        raise DatasetError(f"no labelled images under {src} ({len(skipped)} files skipped)")
    return Inputs(classes, samples, skipped)


def label_counts(samples: list[tuple[str, int]], skipped: list[dict]) -> dict[str, int]:
    """Stored samples per label: ``samples`` less the paths in ``skipped`` (for --verify)."""
    gone = {s["path"] for s in skipped}
    counts: dict[str, int] = {}
    for path, label in samples:
        if path not in gone:
            counts[str(label)] = counts.get(str(label), 0) + 1
    return counts


def list_inputs(cfg: ConvertConfig) -> Inputs:
    """The inputs of a conversion, in a fixed order; raises DatasetError when none."""
    if cfg.labels is not None:
        if cfg.unlabeled:
            raise ValueError("--labels and --unlabeled contradict each other")
        return _labelled_flat(cfg)
    scan = scan_image_folder(cfg.src, unlabeled=cfg.unlabeled)
    skipped = [{"path": s.path, "reason": s.reason} for s in scan.skipped]
    if not scan.labelled:
        return Inputs([], scan.samples, skipped, labelled=False)
    if cfg.classes_from:
        train = load_class_list(cfg.classes_from)
        unknown = sorted(set(scan.classes) - set(train))
        if unknown:
            raise DatasetError(f"{cfg.src} has class folder(s) the training split "
                               f"({cfg.classes_from}) does not have: {', '.join(unknown[:10])}")
        remap = [train.index(c) for c in scan.classes]
        return Inputs(train, [(p, remap[y]) for p, y in scan.samples], skipped)
    return Inputs(scan.classes, scan.samples, skipped)
