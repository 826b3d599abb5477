"""Vision Transformer backbone with the parameter names of the official DINO checkpoints.

``state_dict()`` keys and shapes equal those of released DINO weights (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``), so a backbone-only file loads with ``strict=True``. Attention runs through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available); the
explicit softmax path is used only when the attention map itself is asked for.

Tokens: ``forward`` returns the CLS output (what the DINO head and evaluation read);
``forward_tokens`` returns every output token by kind (CLS, register tokens, patch tokens),
for recipes with patch-level losses. A model built with ``mask_token=True`` also takes a
boolean patch mask: masked patch embeddings are replaced by a learned ``mask_token`` before
the position embeddings are added (the masked-image-modelling input of iBOT / DINOv2). The
token exists only in such models, so the official DINO ``state_dict`` layout is unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hs)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights (B, nh, N, N), computed explicitly."""
        q, k, _ = self._qkv(x)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches: a conv with kernel = stride = patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(nn.Module):
    """ViT whose ``forward`` returns the CLS token after the final norm, shape (B, D).

    ``mask_token``: build with a learned mask token ``[1, D]`` (zeros at init), so that
    ``forward_tokens(x, masks)`` can mask patches; off, the model has no such parameter.
    """

    num_registers = 0  # register tokens between CLS and the patches (none yet)

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 mask_token: bool = False):
        super().__init__()
        if patch_size < 1 or img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear over depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()
        # After the random init: a model with a mask token draws the same weights as one
        # without. None registers no parameter (no state_dict key).
        self.register_parameter(
            "mask_token", nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + gh * gw, D) for an (h, w)-pixel input (gh = h // p).

        Computed exactly as upstream DINO computes them, so that the same weights give the same
        features in this code and in upstream's at every input size (checkpoint
        compatibility: official weights loaded here, and weights trained here evaluated
        there). The stored s x s grid (s = sqrt(N)) is resized bicubically (align_corners
        False) with the scale factors (gh + 0.1) / s for rows and (gw + 0.1) / s for columns,
        not with an output size: ``F.interpolate`` samples output index i at source
        (i + 0.5) / factor - 0.5, so the factor, and with it the + 0.1, decides the values.
        Upstream adds the 0.1 so that floor(s * factor) is gh and gw despite floating-point
        rounding; the output size is checked. (Upstream unpacks ``B, nc, w, h = x.shape``, so
        its ``w0`` counts rows and its first factor is the rows' factor, as here.) Like
        upstream, the stored embedding is returned unchanged when the input is square and has
        N patches.
        """
        n_patches = self.pos_embed.shape[1] - 1
        gh, gw = h // self.patch_size, w // self.patch_size
        if gh * gw == n_patches and h == w:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.sqrt(n_patches))
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, s, s)
        factors = ((gh + 0.1) / math.sqrt(n_patches), (gw + 0.1) / math.sqrt(n_patches))
        grid = F.interpolate(grid.float(), scale_factor=factors, mode="bicubic",
                             align_corners=False)  # (1, D, gh, gw)
        if grid.shape[-2:] != (gh, gw):
            raise RuntimeError(f"position-embedding resize of a {side}x{side} grid gave "
                               f"{tuple(grid.shape[-2:])}, expected ({gh}, {gw})")
        patch_pos = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Input tokens (B, 1 + N, D): CLS, then the patch embeddings (masked ones replaced by
        ``mask_token``), plus position embeddings. ``masks``: bool (B, N) or (B, gh, gw),
        True = masked."""
        B, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of patch size {self.patch_size}")
        tokens = self.patch_embed(x)                                  # (B, N, D)
        if masks is not None:
            tokens = self._mask(tokens, masks)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(h, w)

    def _mask(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, N, D) with the rows where ``masks`` is True set to the mask token."""
        if self.mask_token is None:
            raise ValueError("patch masks need a model built with mask_token=True")
        B, N, _ = tokens.shape
        if masks.dtype != torch.bool or masks.shape[0] != B or masks[0].numel() != N:
            raise ValueError(f"masks must be bool [{B}, {N}] (or [{B}, gh, gw]) for this "
                             f"input, got {masks.dtype} {tuple(masks.shape)}")
        return torch.where(masks.reshape(B, N, 1), self.mask_token.to(tokens.dtype), tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """All tokens after the final norm, (B, 1 + N, D); ``masks`` as ``prepare_tokens``."""
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
        """The output tokens by kind, after the final norm: ``cls`` (B, D), ``registers``
        (B, R, D) (R = ``num_registers``, 0 for now), ``patches`` (B, N, D) in row-major grid
        order. ``masks``: None, or bool (B, N) / (B, gh, gw), True where the patch is
        replaced by ``mask_token`` (a model built with ``mask_token=True``)."""
        out = self.forward_features(x, masks)
        r = 1 + self.num_registers
        return {"cls": out[:, 0], "registers": out[:, 1:r], "patches": out[:, r:]}

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block, (B, heads, 1 + N, 1 + N)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1].attn.attention_map(self.blocks[-1].norm1(x))

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normed outputs (B, 1 + N, D) of the last ``n`` blocks, as the linear probe uses."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= len(self.blocks) - n:
                out.append(self.norm(x))
        return out


ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def build_vit(arch: str, patch_size: int = 16, **kw) -> VisionTransformer:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    img_size = kw.pop("img_size", 224 // patch_size * patch_size)
    return VisionTransformer(img_size=img_size, patch_size=patch_size, **ARCHS[arch], **kw)


def vit_tiny(patch_size: int = 16, **kw) -> VisionTransformer:
    return build_vit("vit_tiny", patch_size, **kw)


def vit_small(patch_size: int = 16, **kw) -> VisionTransformer:
    return build_vit("vit_small", patch_size, **kw)


def vit_base(patch_size: int = 16, **kw) -> VisionTransformer:
    return build_vit("vit_base", patch_size, **kw)


def vit_large(patch_size: int = 16, **kw) -> VisionTransformer:
    return build_vit("vit_large", patch_size, **kw)
