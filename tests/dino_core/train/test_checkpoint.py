"""The training checkpoint's checks: another architecture is refused in one line."""
import pytest
import torch

from dino_core.formats.files import CheckpointError, load_state
from dino_core.train.checkpoint import check_compatible


def test_other_architecture_is_refused_in_one_line(tmp_path):
    ckpt = {"config": {"model": {"arch": "vit_base", "patch_size": 16, "out_dim": 10}}}
    with pytest.raises(CheckpointError, match="arch='vit_base'.*vit_tiny"):
        check_compatible(ckpt, {"arch": "vit_tiny", "patch_size": 16, "out_dim": 10}, "x.pth")
    with pytest.raises(CheckpointError, match="does not match"):
        load_state(torch.nn.Linear(2, 3), {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)},
                   "student", "x.pth")
