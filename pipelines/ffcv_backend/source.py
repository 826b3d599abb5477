"""Which .beton a ``--data`` path names, and which of its fields are the image and the label.

Two kinds of file are read alike:
- converted (``dino-convert --format ffcv``): ``manifest.json`` next to the file names it;
  the class names come from the manifest;
- stock (written by FFCV's own ``DatasetWriter``, as FFCV's ImageNet example does): no
  manifest. The class count is read from the label column (max label + 1; class names are
  the label numbers), and one log line says what was found.
Either way the fields are found in the file's own field table: the image is the first
``RGBImageField`` and the label the first ``IntField``, unless ``fields`` ("image,label",
``--ffcv-fields``) names them. Every write mode of ``RGBImageField`` is read (``jpg``,
``raw``, and ``smart`` / ``proportion``, which store each sample as one of those two: its
metadata says which), by ``decode_once.MultiCropDecoder``.

``data`` may be the file or a folder holding exactly one ``.beton``. A folder whose
conversion was interrupted (its ``.<name>.partial`` still there) is refused: the old file
it would replace must not pass for the new one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..folder import DatasetError
from ..formats.manifest import Manifest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BetonSource:
    """A readable .beton and what the loader takes from it.

    image_field / label_field: field names as written in the file.
    classes: class names (the manifest's, or "0" .. "C-1" for a stock file).
    converted: whether a manifest describes the file.
    all_fields: every field of the file, in its order (the loader reads two of them).
    """

    path: Path
    image_field: str
    label_field: str
    classes: tuple[str, ...]
    num_samples: int
    converted: bool
    all_fields: tuple[str, ...] = ()


def parse_fields(fields: str | None) -> tuple[str, str] | None:
    """``"image,label"`` -> ("image", "label"); None -> None (the first of each kind)."""
    if fields is None:
        return None
    names = tuple(n.strip() for n in fields.split(","))
    if len(names) != 2 or not all(names):
        raise ValueError(f"--ffcv-fields must be IMAGE,LABEL (two field names), got {fields!r}")
    return names


def find_beton(data: str | Path) -> Path:
    """The .beton behind ``data``: the file itself, or the one .beton of a folder."""
    path = Path(data)
    if not path.exists():
        raise DatasetError(f"FFCV dataset not found: {path}")
    if path.is_dir():
        betons = sorted(path.glob("*.beton"))
        if len(betons) != 1:
            raise DatasetError(f"{path} must hold exactly one .beton file, found "
                               f"{len(betons)} (write one with FFCV's DatasetWriter, or "
                               "dino-convert --format ffcv)")
        path = betons[0]
    elif path.suffix != ".beton":
        raise DatasetError(f"{path} is not a .beton file (write one with FFCV's DatasetWriter, "
                           "or dino-convert --format ffcv)")
    partial = path.with_name(f".{path.name}.partial")
    if partial.exists():
        raise DatasetError(f"{path}: a conversion into {path.parent} did not finish (found "
                           f"{partial.name}); run dino-convert again")
    return path


def _manifest(path: Path) -> Manifest | None:
    """The manifest next to ``path`` when it describes this file, else None (stock)."""
    at = path.with_name(MANIFEST)
    if not at.is_file():
        return None
    try:
        manifest = Manifest.load(at)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    if manifest.format == "ffcv" and path.name in {s.get("name") for s in manifest.shards}:
        return manifest
    return None


def _pick(handlers: dict, kind: type, wanted: str | None, what: str, path: Path) -> str:
    """The name of the field of type ``kind`` to read (``wanted``, else the first)."""
    found = ", ".join(f"{n} ({type(h).__name__})" for n, h in handlers.items()) or "none"
    if wanted is not None:
        if not isinstance(handlers.get(wanted), kind):
            raise DatasetError(f"{path}: --ffcv-fields names {wanted!r} as the {what}, which "
                               f"must be an {kind.__name__}; the file's fields: {found}")
        return wanted
    for name, handler in handlers.items():
        if isinstance(handler, kind):
            return name
    raise DatasetError(f"{path} has no {kind.__name__} field (the {what}); the file's "
                       f"fields: {found}")


def open_beton(data: str | Path, fields: str | None = None) -> BetonSource:
    """The .beton behind ``data`` with its image and label fields and classes (module
    docstring); every problem is one ``DatasetError`` naming the file."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    wanted = parse_fields(fields) or (None, None)
    path = find_beton(data)
    try:
        reader = Reader(str(path))
    except Exception as e:  # a truncated or foreign file fails in many ways inside FFCV
        raise DatasetError(f"{path} is not a readable .beton ({type(e).__name__}: {e})") from None
    handlers = reader.handlers
    image = _pick(handlers, RGBImageField, wanted[0], "image", path)
    label = _pick(handlers, IntField, wanted[1], "label", path)
    n = int(reader.num_samples)
    if n == 0:
        raise DatasetError(f"{path} holds no samples")
    manifest = _manifest(path)
    if manifest is not None:
        return BetonSource(path, image, label, tuple(manifest.classes), n, True,
                           tuple(handlers))
    names = list(handlers)
    labels = np.asarray(reader.metadata[f"f{names.index(label)}"], dtype=np.int64)
    if labels.min() < 0:
        raise DatasetError(f"{path}: field {label!r} holds negative values "
                           f"(min {labels.min()}), not class labels 0..C-1")
    modes = np.asarray(reader.metadata[f"f{names.index(image)}"]["mode"])
    classes = int(labels.max()) + 1
    log.info("%s: stock FFCV file (no %s): %d samples, image field %r (%d jpg, %d raw), "
             "label field %r, %d classes (0..%d, from the labels)", path, MANIFEST, n, image,
             int((modes == 0).sum()), int((modes != 0).sum()), label, classes, classes - 1)
    return BetonSource(path, image, label, tuple(str(c) for c in range(classes)), n, False,
                       tuple(names))
