"""The evaluation transform and a plain ImageFolder dataset for k-NN / linear evaluation.

DINO evaluates on Resize(256, bicubic) of the shorter side + CenterCrop(224), normalised
with the training mean/std (dino_recipe.md). Sizes are configurable; mean/std default to
the augmentation spec's, so neither is restated here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .folder import FolderScan, Skipped, report_skipped, scan_image_folder
from .images import SampleReader
from .reference import RESAMPLE, to_normalized_tensor
from .spec import AugmentationSpec, SpecError

_DEFAULT_SPEC = AugmentationSpec()


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size``; the longer side is int(size * long / short)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if short == size:
        return img
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square (offsets rounded as round((side - size) / 2))."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot centre-crop {size}x{size} out of a {w}x{h} image")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> float32 [3, crop, crop]: resize shorter side, centre crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = _DEFAULT_SPEC.mean
    std: tuple[float, float, float] = _DEFAULT_SPEC.std
    interpolation: str = _DEFAULT_SPEC.interpolation

    def __post_init__(self) -> None:
        if not (isinstance(self.crop, int) and self.crop >= 1):
            raise SpecError(f"eval transform field 'crop': must be an integer >= 1, got {self.crop!r}")
        if not (isinstance(self.resize, int) and self.resize >= self.crop):
            raise SpecError(f"eval transform field 'resize': must be an integer >= crop "
                            f"({self.crop}), got {self.resize!r}")
        if self.interpolation not in RESAMPLE:
            raise SpecError(f"eval transform field 'interpolation': must be one of "
                            f"{tuple(RESAMPLE)}, got {self.interpolation!r}")

    @classmethod
    def from_spec(cls, spec: AugmentationSpec, resize: int = 256, crop: int = 224) -> "EvalTransform":
        """The eval transform matching a training spec's normalisation and interpolation."""
        return cls(resize, crop, spec.mean, spec.std, spec.interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = center_crop(resize_shorter(img, self.resize, self.interpolation), self.crop)
        return to_normalized_tensor(img, self.mean, self.std)


class EvalImageFolder(Dataset):
    """``root/<class>/<image>`` -> (float32 [3, crop, crop], label), for feature extraction
    (or the samples of a ready ``scan``, e.g. a flat val folder with a labels file).

    Files the scan rejects are logged and left out; an image that fails to decode later is
    logged and replaced by the next decodable sample (see ``SampleReader``), never fatal.
    """

    def __init__(self, root: str | Path, resize: int = 256, crop: int = 224,
                 mean: tuple[float, float, float] = _DEFAULT_SPEC.mean,
                 std: tuple[float, float, float] = _DEFAULT_SPEC.std,
                 interpolation: str = _DEFAULT_SPEC.interpolation,
                 scan: FolderScan | None = None) -> None:
        scan = scan if scan is not None else scan_image_folder(root)
        report_skipped(scan.skipped)
        self.root = scan.root
        self.classes: list[str] = scan.classes
        self.samples: list[tuple[str, int]] = scan.samples
        self.skipped: list[Skipped] = scan.skipped
        self.transform = EvalTransform(resize, crop, tuple(mean), tuple(std), interpolation)
        self._reader = SampleReader(scan.samples)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in dataset order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} images")
        img, label = self._reader.read(index % len(self.samples))
        return self.transform(img), label
