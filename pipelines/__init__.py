"""Everything between image files on disk and a batch of multi-crop views on the device.

The names below are imported on first use (PEP 562), not with the package: ``pipelines.loader``
and ``pipelines.batch`` import torch (~2 s), and ``dino-convert`` and its worker processes,
which live in ``pipelines.convert``, must start without it.
"""
from __future__ import annotations

import importlib

_WHERE = {"Batch": "batch", "BACKENDS": "loader", "MultiCropLoader": "loader",
          "build_loader": "loader", "AugmentationSpec": "spec", "ColorJitterSpec": "spec",
          "SpecError": "spec", "ViewSpec": "spec"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
