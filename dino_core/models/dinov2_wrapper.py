"""The DINOv2 student / teacher: a ViT, the DINO head for CLS tokens and, for the masked
patch tokens, the same head or an iBOT head of their own (DINOv2's ``separate_head``).

One module (so DDP sees one forward): the global crops go through the backbone together,
with their masks (masked patches replaced by the backbone's ``mask_token``), the local crops
once per resolution group; then ONE head pass over every CLS token and, when the head is
shared, the selected patch tokens too (DINOv2 batches them the same way), else the iBOT head
over the patch tokens. The teacher is the same module called on the unmasked global crops.

    out = model(crops, masks=None, mask_index=None)
    out.cls_logits     [V*B, K]   every crop's CLS through the DINO head, view-major
                                  (only the global crops when given only those)
    out.patch_logits   [M, K']    the patch tokens at ``mask_index`` (flat positions in the
                                  global crops' [2B * N] patch tokens), through their head;
                                  None without ``mask_index``
    out.global_cls     [2B, D]    the global crops' CLS tokens before the head (KoLeo)

Parameter names: ``backbone.*``, ``head.*`` (the DINO layout), ``ibot_head.*`` when separate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.spec import size_runs

GLOBAL_CROPS = 2


@dataclass
class DINOv2Output:
    cls_logits: torch.Tensor
    patch_logits: torch.Tensor | None
    global_cls: torch.Tensor


class DINOv2Wrapper(nn.Module):
    """Backbone, DINO head and optional iBOT head (see the module docstring)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, ibot_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        if ibot_head is not None:
            self.ibot_head = ibot_head  # no attribute at all otherwise: no state_dict keys

    @property
    def separate_ibot_head(self) -> bool:
        return hasattr(self, "ibot_head")

    def forward(self, crops: list[torch.Tensor], masks: torch.Tensor | None = None,
                mask_index: torch.Tensor | None = None) -> DINOv2Output:
        """``crops``: the global crops first (2 tensors ``[B, 3, G, G]``), then any local crops;
        ``masks``: bool ``[2B, gh, gw]`` (view-major) or None; ``mask_index``: int64 ``[M]`` or
        None (see the module docstring)."""
        globals_ = torch.cat(crops[:GLOBAL_CROPS])
        tokens = self.backbone.forward_tokens(globals_, masks)
        cls = [tokens["cls"]]
        rest = crops[GLOBAL_CROPS:]
        for first, count, _ in size_runs([c.shape[-2:] for c in rest]):
            cls.append(self.backbone(torch.cat(rest[first:first + count])))
        all_cls = torch.cat(cls) if len(cls) > 1 else cls[0]               # [V*B, D]
        picked = None
        if mask_index is not None:
            patches = tokens["patches"]                                    # [2B, N, D]
            picked = patches.reshape(-1, patches.shape[-1]).index_select(0, mask_index)
        if picked is None or self.separate_ibot_head:
            cls_logits = self.head(all_cls)
            patch_logits = None if picked is None else self.ibot_head(picked)
        else:  # one head pass over CLS and patch tokens together
            both = self.head(torch.cat((all_cls, picked)))
            cls_logits, patch_logits = both[:all_cls.shape[0]], both[all_cls.shape[0]:]
        return DINOv2Output(cls_logits, patch_logits, tokens["cls"])
