"""DINO projection head and the multi-crop wrapper.

Head: Linear(D, 2048)-GELU-Linear(2048, 2048)-GELU-Linear(2048, 256) (optional BatchNorm after
the first two linears), L2 normalisation, then a weight-normalised Linear(256, K, no bias).
Keys equal the official checkpoints: ``mlp.0``, ``mlp.2``, ``mlp.4`` (``mlp.1``, ``mlp.4``,
``mlp.7`` with BN) and ``last_layer.weight_g`` [K, 1], ``last_layer.weight_v`` [K, 256].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.spec import size_runs


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g * v / ||v|| per output row (weight norm, dim 0).

    Written out (rather than torch's parametrisation) so the parameters keep the official
    names ``weight_g`` and ``weight_v``.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=1, keepdim=True))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, use_bn: bool = False,
                 norm_last_layer: bool = True, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1.0)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone once per resolution group (consecutive crops of equal size), head once on all.

    ``forward(crops)`` takes a list of (B, 3, H_i, W_i) tensors and returns head outputs of
    shape (len(crops) * B, K), ordered crop by crop.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats = [self.backbone(torch.cat(crops[first:first + count]))
                 for first, count, _ in size_runs([c.shape[-2:] for c in crops])]
        return self.head(torch.cat(feats))
