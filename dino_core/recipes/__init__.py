"""Recipes: what a self-supervised method builds, computes per step and keeps (``base.Recipe``).

The registry maps a name (``TrainConfig.recipe``, ``dino-train --recipe``) to where its class
lives; the class is imported when a run builds it, so the CLI and the config check read the
names without importing any model. DINO (``dino.py``) is the first recipe, DINOv2
(``dinov2.py``, its config section in ``dinov2_config.py``) the second.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig
    from .base import Recipe

RECIPES: dict[str, str] = {
    "dino": "dino_core.recipes.dino:DINORecipe",
    "dinov2": "dino_core.recipes.dinov2:DINOv2Recipe",
}


def recipe_class(name: str) -> type["Recipe"]:
    """The class registered as ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    module, _, cls = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_recipe(cfg: "TrainConfig") -> "Recipe":
    """The recipe ``cfg.recipe``, built from ``cfg`` (its own section and the shared ones)."""
    return recipe_class(cfg.recipe).from_config(cfg)
