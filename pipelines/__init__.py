"""Everything between image files on disk and a batch of multi-crop views on the device."""
from .batch import Batch
from .loader import BACKENDS, MultiCropLoader, build_loader
from .spec import AugmentationSpec, ColorJitterSpec, SpecError, ViewSpec

__all__ = ["BACKENDS", "AugmentationSpec", "Batch", "ColorJitterSpec", "MultiCropLoader",
           "SpecError", "ViewSpec", "build_loader"]
