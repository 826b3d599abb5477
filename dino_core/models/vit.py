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

DINOv2 options (Oquab et al. 2023; registers: Darcet et al. 2023), each off by default, and
off they add no parameter, no random draw and no operation, so the DINO model is unchanged
bit for bit. The names are those of the official DINOv2 checkpoints
(facebookresearch/dinov2, ``DinoVisionTransformer``):

- ``layerscale`` > 0: LayerScale on both residual branches, ``blocks.i.ls1.gamma`` and
  ``blocks.i.ls2.gamma`` [D], initialised to that value (DINOv2 trains with 1e-5).
- ``num_register_tokens`` R > 0: ``register_tokens`` [1, R, D] (init N(0, 1e-6) as DINOv2),
  placed as DINOv2 places them: after the CLS token and before the patches, inserted AFTER
  the position embeddings are added, so they receive none. ``forward_features`` returns
  (B, 1 + R + N, D); ``forward_tokens`` splits it. The evaluation views
  (``get_intermediate_layers``, ``get_last_selfattention``) drop the register rows (and
  columns) so that they keep their (1 + N)-token shapes, as DINOv2's own
  ``get_intermediate_layers`` returns no registers.
- ``ffn_layer="swiglu"``: the SwiGLU FFN (``mlp.w12``, ``mlp.w3``; ``dinov2_layers.py``).
- ``drop_path_uniform``: every block drops its branches with the same rate (DINOv2's
  default) instead of a rate rising linearly over depth (DINO's). Drop path itself is
  DINO's per-sample ``DropPath`` for both: DINOv2's block, at rates above 0.1, instead
  runs each branch on a random subset of (1 - rate) of the batch and scales it by
  B / subset (the same expectation, less compute, other random draws); not reproduced.
- ``interpolate_offset`` / ``interpolate_antialias``: the position-embedding resize
  (``interpolate_pos_encoding``). DINO and the first DINOv2 release (2023-04) use offset 0.1
  without antialiasing; the registers release (2023-10) made both settings arguments and
  builds its register models (``dinov2_vit*14_reg``) with offset 0.0 (an output size
  instead of a scale factor) and antialiasing, its other models with the old settings. This
  module follows that later version (facebookresearch/dinov2 ``vision_transformer.py``
  after the registers commit), whose offset-0.1 path equals the first release's.

Released DINOv2 models store position embeddings for a 518 px grid (37 x 37 at patch 14):
build with ``img_size=518`` to load them as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dinov2_layers import LayerScale, SwiGLUFFN


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


FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN}  # ffn_layer -> module(dim, hidden)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``+ ls2(mlp(norm2(x)))``,
    each branch under drop path. ``layerscale`` 0: no LayerScale (``ls1``/``ls2`` are
    identities without parameters); ``ffn_layer``: "mlp" (GELU) or "swiglu"."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, eps: float = 1e-6, layerscale: float = 0.0,
                 ffn_layer: str = "mlp"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


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
    The DINOv2 options (``layerscale``, ``num_register_tokens``, ``ffn_layer``,
    ``drop_path_uniform``, ``interpolate_offset``, ``interpolate_antialias``) are described
    in the module docstring; their defaults are DINO's.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 mask_token: bool = False, layerscale: float = 0.0,
                 num_register_tokens: int = 0, ffn_layer: str = "mlp",
                 drop_path_uniform: bool = False, interpolate_offset: float = 0.1,
                 interpolate_antialias: bool = False):
        super().__init__()
        if patch_size < 1 or img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; choose from {', '.join(FFN_LAYERS)}")
        if num_register_tokens < 0 or layerscale < 0 or interpolate_offset < 0:
            raise ValueError("num_register_tokens, layerscale and interpolate_offset must be "
                             f">= 0, got {num_register_tokens}, {layerscale}, {interpolate_offset}")
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.num_registers = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:  # linear over depth
            rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r, layerscale=layerscale,
                  ffn_layer=ffn_layer) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()
        # After the random init: a model with a mask token or registers draws the same
        # weights as one without. None registers no parameter (no state_dict key).
        self.register_parameter(
            "mask_token", nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None)
        registers = None
        if num_register_tokens:
            registers = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            nn.init.normal_(registers, std=1e-6)
        self.register_parameter("register_tokens", registers)

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

        Computed exactly as upstream DINO / DINOv2 compute them, so that the same weights give
        the same features in this code and in upstream's at every input size (checkpoint
        compatibility: official weights loaded here, and weights trained here evaluated
        there). The stored s x s grid (s = sqrt(N)) is resized bicubically (align_corners
        False), with antialiasing when ``interpolate_antialias``:

        - ``interpolate_offset`` > 0 (DINO; DINOv2 without registers: 0.1): with the scale
          factors (gh + offset) / s for rows and (gw + offset) / s for columns, not with an
          output size: ``F.interpolate`` samples output index i at source
          (i + 0.5) / factor - 0.5, so the factor, and with it the offset, decides the
          values. Upstream adds the 0.1 so that floor(s * factor) is gh and gw despite
          floating-point rounding; the output size is checked.
        - offset 0 (DINOv2's register models): with the output size (gh, gw).

        (Upstream unpacks ``B, nc, w, h = x.shape``, so its ``w0`` counts rows and its first
        factor is the rows' factor, as here.) Like upstream, the stored embedding is returned
        unchanged when the input is square and has N patches. The resize runs in float32 and
        is cast back to the parameter's dtype.
        """
        n_patches = self.pos_embed.shape[1] - 1
        gh, gw = h // self.patch_size, w // self.patch_size
        if gh * gw == n_patches and h == w:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.sqrt(n_patches))
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, s, s)
        off = self.interpolate_offset
        if off:
            size = {"scale_factor": ((gh + off) / math.sqrt(n_patches),
                                     (gw + off) / math.sqrt(n_patches))}
        else:
            size = {"size": (gh, gw)}
        aa = {"antialias": True} if self.interpolate_antialias else {}
        grid = F.interpolate(grid.float(), mode="bicubic", align_corners=False, **size,
                             **aa)  # (1, D, gh, gw)
        if grid.shape[-2:] != (gh, gw):
            raise RuntimeError(f"position-embedding resize of a {side}x{side} grid gave "
                               f"{tuple(grid.shape[-2:])}, expected ({gh}, {gw})")
        patch_pos = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Input tokens (B, 1 + R + N, D): CLS, then the R register tokens, then the patch
        embeddings (masked ones replaced by ``mask_token``); position embeddings are added to
        CLS and patches only. ``masks``: bool (B, N) or (B, gh, gw), True = masked."""
        B, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of patch size {self.patch_size}")
        tokens = self.patch_embed(x)                                  # (B, N, D)
        if masks is not None:
            tokens = self._mask(tokens, masks)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h, w)        # (B, 1 + N, D)
        if self.register_tokens is None:
            return tokens
        return torch.cat((tokens[:, :1], self.register_tokens.expand(B, -1, -1),
                          tokens[:, 1:]), dim=1)

    def _without_registers(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` without the register positions 1..R along ``dim`` (itself when R = 0)."""
        if not self.num_registers:
            return t
        r = 1 + self.num_registers
        return torch.cat((t.narrow(dim, 0, 1), t.narrow(dim, r, t.shape[dim] - r)), dim=dim)

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
        """All tokens after the final norm, (B, 1 + R + N, D); ``masks`` as
        ``prepare_tokens``."""
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
        """The output tokens by kind, after the final norm: ``cls`` (B, D), ``registers``
        (B, R, D) (R = ``num_registers``), ``patches`` (B, N, D) in row-major grid
        order. ``masks``: None, or bool (B, N) / (B, gh, gw), True where the patch is
        replaced by ``mask_token`` (a model built with ``mask_token=True``)."""
        out = self.forward_features(x, masks)
        r = 1 + self.num_registers
        return {"cls": out[:, 0], "registers": out[:, 1:r], "patches": out[:, r:]}

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block between CLS and patches, (B, heads, 1 + N,
        1 + N). With registers, their rows and columns are left out (the rows then sum to
        less than 1: what the registers drew)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        attn = self.blocks[-1].attn.attention_map(self.blocks[-1].norm1(x))
        return self._without_registers(self._without_registers(attn, 2), 3)

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normed outputs (B, 1 + N, D) (CLS and patches; no registers) of the last ``n``
        blocks, as the linear probe uses."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= len(self.blocks) - n:
                out.append(self._without_registers(self.norm(x), 1))
        return out


ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    # DINOv2's ViT-g ("close to ViT-giant, with embed-dim 1536 and 24 heads"; head dim 64),
    # which DINOv2 trains and releases with ffn_layer="swiglu" (SwiGLU width 4096).
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24),
}


def build_vit(arch: str, patch_size: int = 16, **kw) -> VisionTransformer:
    """The ``ARCHS[arch]`` ViT; ``img_size`` (the position grid in pixels) defaults to 224
    rounded down to a multiple of ``patch_size``; other keywords go to VisionTransformer
    (DINOv2's released models: patch 14, ``img_size=518``, ``layerscale``, registers)."""
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
