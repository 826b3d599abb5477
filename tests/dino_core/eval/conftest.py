"""Randomly initialised ViTs shared by the evaluation tests (initialising one costs more than
the tiny forward passes the tests make with it)."""
import functools

import pytest
import torch

from dino_core.models import build_vit


@functools.lru_cache(maxsize=None)
def _vit(patch: int) -> torch.nn.Module:
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", patch).eval()
    for p in vit.parameters():
        p.requires_grad_(False)
    return vit


@pytest.fixture(scope="session")
def random_vit():
    """random_vit(patch) -> the same frozen, seeded vit_tiny/patch for every test."""
    return _vit
