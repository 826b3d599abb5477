"""Image datasets of the evaluation protocols.

- ``open_eval_splits(root)``: ``root/train`` and ``root/val`` (class folders, or ImageNet's
  flat val folder with ``LOC_val_solution.csv`` / a ``filename,class`` CSV next to it, labelled
  with the training split's classes) through the evaluation transform
  of ``pipelines.eval_transform`` (Resize shorter side 256 bicubic, CenterCrop 224, normalise),
  with a check that both splits have the same classes (else labels would silently differ).
- ``ImageList``: images by path for retrieval and copy detection, shrunk to a longest side or
  resized to a square, optionally cropped to a box first; unreadable files are errors.
- ``ProbeTrainFolder``: the linear probe's training view, a random resized crop (the
  ``sample_crop_box`` of the shared sampler, ratio from the spec) and a horizontal flip,
  seeded per (seed, rank, epoch, index) like every other sampler of the project.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from pipelines.folder import DatasetError, report_skipped, scan_image_folder
from pipelines.images import SampleReader
from pipelines.reference import hflip, resized_crop, to_normalized_tensor
from pipelines.sampling import sample_crop_box, sample_rng
from pipelines.spec import AugmentationSpec


def split_dirs(root: str | Path) -> tuple[Path, Path]:
    """(root/train, root/val), or a DatasetError naming what is missing."""
    root = Path(root)
    dirs = (root / "train", root / "val")
    for d in dirs:
        if not d.is_dir():
            raise DatasetError(f"evaluation data {root} must hold train/ and val/ class folders "
                               f"(root/<split>/<class>/<image>); {d} is missing")
    return dirs


def flat_val_scan(val_dir: Path, classes: list[str]):
    """ImageNet's val layout: images directly in ``val_dir`` and a labels file next to it or
    inside it (``pipelines.labels_file``), labelled with the training split's ``classes``;
    None for a class-folder val split."""
    from pipelines.folder import is_unlabeled_folder
    from pipelines.labels_file import LABELS_FILE_NAMES, find_labels_file, scan_labelled_flat

    if not is_unlabeled_folder(val_dir):
        return None
    labels = find_labels_file(val_dir)
    if labels is None:
        raise DatasetError(f"{val_dir} holds images without class folders, and no labels file "
                           f"({' or '.join(LABELS_FILE_NAMES)}) is next to it or inside it")
    return scan_labelled_flat(val_dir, labels, classes)


def open_eval_splits(root: str | Path) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, classes): both splits under the evaluation transform, same classes."""
    from pipelines.eval_transform import EvalImageFolder

    train_dir, val_dir = split_dirs(root)
    train = EvalImageFolder(train_dir)
    val = EvalImageFolder(val_dir, scan=flat_val_scan(val_dir, train.classes))
    if list(train.classes) != list(val.classes):
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DatasetError(f"{train_dir} and {val_dir} have different class folders "
                           f"(in one only: {', '.join(only) or 'same names, other order'}); "
                           "k-NN and linear evaluation need identical classes")
    return train, val, list(train.classes)


class ProbeTrainFolder(Dataset):
    """ImageFolder with the probe's training augmentation; items (tensor [3, S, S], label)."""

    def __init__(self, root: str | Path, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 seed: int = 0, rank: int = 0, spec: AugmentationSpec | None = None):
        scan = scan_image_folder(root)
        report_skipped(scan.skipped)
        self.samples, self.classes = scan.samples, scan.classes
        self._reader = SampleReader(scan.samples)  # an undecodable file is replaced, not fatal
        self.size, self.scale, self.seed, self.rank = size, scale, seed, rank
        self.spec = spec or AugmentationSpec()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} images")
        image, label = self._reader.read(index)
        rng = sample_rng(self.seed, self.rank, self.epoch, index)
        box = sample_crop_box(image.width, image.height, self.scale, self.spec.ratio, rng)
        image = resized_crop(image, box, self.size, self.spec.interpolation)
        if rng.random() < self.spec.flip_p:
            image = hflip(image)
        return to_normalized_tensor(image, self.spec.mean, self.spec.std), label


class ImageList(Dataset):
    """Images by path -> (normalised tensor [3, h, w], index): shrunk so the longer side is at
    most ``max_side`` (aspect kept), or resized to ``square`` x ``square``; optionally
    cropped to a box first. Unreadable files are errors naming the file."""

    def __init__(self, paths: Sequence[Path], max_side: int | None = None,
                 square: int | None = None, boxes: Sequence | None = None,
                 spec: AugmentationSpec | None = None):
        self.paths, self.max_side, self.square, self.boxes = list(paths), max_side, square, boxes
        self.spec = spec or AugmentationSpec()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises many types on a bad file
            raise DatasetError(f"image {self.paths[i]} is unreadable ({type(e).__name__}: "
                               f"{e})") from None
        if self.boxes is not None and self.boxes[i] is not None:
            img = img.crop(tuple(int(round(v)) for v in self.boxes[i]))
        if self.max_side is not None:
            img.thumbnail((self.max_side, self.max_side), Image.LANCZOS)
        if self.square is not None:
            img = img.resize((self.square, self.square), Image.BICUBIC)
        return to_normalized_tensor(img, self.spec.mean, self.spec.std), i
