"""The layout of a training checkpoint, and the checks a resume makes on it.

Layout (see CONTRIBUTING.md): ``student`` (keys ``module.backbone.*`` / ``module.head.*``, as
the reference's DDP-wrapped student), ``teacher`` (``backbone.*`` / ``head.*``),
``optimizer``, ``fp16_scaler``, ``epoch`` (epochs finished), ``epoch_batches``,
``iteration``, ``data_position``, ``config`` (plain dict), ``rng`` (generator states) and the
recipe's own entries (DINO: ``dino_loss`` ``{"center": [1, K]}``), which the recipe checks.
Files are written and read by ``dino_core.formats.files``, rotated by ``store.py``.
"""
from __future__ import annotations

import os

from ..formats.files import CheckpointError

TRAINING_KEYS = ("student", "teacher", "optimizer", "epoch")


def check_training_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Refuse, with one line, a file that is not a dino-train checkpoint (e.g. backbone-only
    weights, which evaluation accepts but training cannot resume from)."""
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a dino-train checkpoint (no {', '.join(missing)}); "
            "resuming needs OUTPUT_DIR/checkpoint.pth of a dino-train run (backbone-only "
            "weights are for dino-knn / dino-linear)")


def check_compatible(ckpt: dict, model_cfg: dict, path: str | os.PathLike) -> None:
    """Refuse, with one line, a checkpoint whose model differs from the one being built."""
    saved = (ckpt.get("config") or {}).get("model")
    if not saved:
        return
    for key in ("arch", "patch_size", "out_dim"):
        if key in saved and saved[key] != model_cfg.get(key):
            raise CheckpointError(
                f"checkpoint {path} is for {key}={saved[key]!r} but this run uses "
                f"{key}={model_cfg.get(key)!r}; use a matching --arch/--patch-size/out_dim or "
                "another --output-dir")
