"""Activation checkpointing per block (``--activation-checkpointing``): the same numbers in
float64 (drop path on: the recomputation replays its masks), the same names, and a lower
peak of live activation memory, counted by a dispatch hook that sees every tensor an op
creates and when it is freed (``benchmarks.harness.memory.TensorPeak``: the CPU allocator
keeps no statistics)."""
import copy

import torch

from benchmarks.harness.memory import TensorPeak
from dino_core.models import VisionTransformer
from dino_core.models.checkpointing import checkpoint_blocks


def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                             drop_path_rate=0.2).double()


def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def forward_backward(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(2)  # drop path's masks
    out = model(images())
    (out.square().sum() + out.sum()).backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_checkpointed_blocks_give_the_same_outputs_and_gradients():
    plain, checkpointed = vit(), vit()
    assert checkpoint_blocks(checkpointed) == 4
    assert type(checkpointed.blocks[0]).__name__ == "CheckpointedBlock"
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    want, want_grads = forward_backward(plain)
    got, grads = forward_backward(checkpointed)
    assert torch.equal(got, want)
    for name, g in want_grads.items():
        assert torch.equal(grads[name], g), name
    # drop path was on: without its masks replayed a gradient would differ
    torch.manual_seed(3)
    assert not torch.equal(plain(images()), want)
    # without grad (the teacher) the checkpointed forward is the plain one
    with torch.no_grad():
        torch.manual_seed(2)
        assert torch.equal(checkpointed(images()), want)
    assert checkpoint_blocks(checkpointed) == 4  # again: the class is not wrapped twice
    assert type(copy.deepcopy(checkpointed).blocks[0]) is type(checkpointed.blocks[0])


def peak_bytes(model: torch.nn.Module) -> int:
    """The peak of live bytes over one forward and backward (activations, the saved
    tensors, the gradients)."""
    x = images()
    with TensorPeak() as counter:
        out = model(x)
        out.square().sum().backward()
        del out
    return counter.peak


def test_checkpointing_lowers_the_peak_activation_memory():
    plain, checkpointed = vit(), vit()
    checkpoint_blocks(checkpointed)
    params = sum(p.numel() * p.element_size() for p in plain.parameters())
    full, low = peak_bytes(plain), peak_bytes(checkpointed)
    # gradients (params bytes) are part of both peaks; the activations kept for the backward
    # are 4 blocks' worth in the plain model, about one block's inputs and one block's
    # recomputation in the checkpointed one
    assert low - params < 0.6 * (full - params), (full, low, params)
