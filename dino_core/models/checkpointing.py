"""Activation checkpointing per transformer block: keep a block's input, recompute the rest.

``checkpoint_blocks(model)`` makes every transformer block of every ViT inside ``model``
run its forward under ``torch.utils.checkpoint`` (non-reentrant) while gradients are being
recorded: the forward keeps only each block's input ``[B, N, D]`` instead of its
activations (attention inputs, MLP hidden ``[B, N, 4D]``, norms ...), and the backward runs
the block's forward again before its own backward: about one more forward of compute for a
fraction of the activation memory. Without grad (the teacher, evaluation) nothing changes.

The blocks change class, not structure: each becomes a subclass of its own class whose
``forward`` wraps the original one, so parameter names, state dicts, the EMA pairing and
FSDP's units are the same as without it (FSDP2's ``fully_shard`` subclasses the same way),
and the models' code needs no hook. The recomputation replays the RNG state of the forward
(drop path draws the same masks), so the numbers are those of the plain forward
(tests/dino_core/models/test_checkpointing.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .vit import VisionTransformer

_CHECKPOINTED: dict[type, type] = {}


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every ViT inside ``model``, in order."""
    return [b for m in model.modules() if isinstance(m, VisionTransformer) for b in m.blocks]


def _checkpointed_class(cls: type) -> type:
    """``cls`` with its forward run under activation checkpointing (made once per class)."""
    if cls not in _CHECKPOINTED:
        def forward(self, *args, **kwargs):
            inner = super(sub, self).forward
            if not torch.is_grad_enabled():
                return inner(*args, **kwargs)
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)

        sub = type(f"Checkpointed{cls.__name__}", (cls,), {
            "forward": forward, "__module__": __name__,
            "__doc__": f"{cls.__name__} whose activations are recomputed in the backward."})
        _CHECKPOINTED[cls] = sub
    return _CHECKPOINTED[cls]


def checkpoint_blocks(model: nn.Module) -> int:
    """Turn on activation checkpointing for every transformer block in ``model`` (in place);
    returns how many blocks."""
    blocks = transformer_blocks(model)
    for block in blocks:
        if type(block) not in _CHECKPOINTED.values():
            block.__class__ = _checkpointed_class(type(block))
    return len(blocks)
