"""Recipes by name: dino is registered and the default, dinov2 the second; other names are
one clear error."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dino_core.config import load_config
from dino_core.recipes import RECIPES, build_recipe, recipe_class
from dino_core.recipes.dino import DINORecipe
from pipelines.config_io import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_dino_is_registered_and_the_default():
    assert list(RECIPES) == ["dino", "dinov2"] and recipe_class("dino") is DINORecipe
    cfg = load_config(None, ["model.out_dim=64"])
    assert cfg.recipe == "dino" and isinstance(build_recipe(cfg), DINORecipe)


def test_an_unknown_recipe_is_one_clear_error():
    with pytest.raises(ConfigError, match="recipe.*unknown recipe 'dinov9'.*dino"):
        load_config(None, ["recipe=dinov9"])
    with pytest.raises(ValueError, match="unknown recipe 'x'"):
        recipe_class("x")


def test_cli_option_sets_the_recipe():
    r = subprocess.run([sys.executable, "-m", "dino_core.cli.train", "--recipe", "dino",
                        "--print-config"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "recipe: dino" in r.stdout
