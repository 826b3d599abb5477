"""Generator states: saved in a checkpoint, restored, the same draws follow."""
import random

import numpy as np
import torch

from dino_core.train import store
from dino_core.train.rng import rng_state, set_rng_state


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    store.write_verified({"rng": rng_state(torch.device("cpu"))}, tmp_path / "c.pth")
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    ckpt = store.load_verified(tmp_path / "c.pth", "cpu")
    set_rng_state(ckpt["rng"], torch.device("cpu"))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]
