"""The DINOv2 backbone options: off they change nothing; on they have DINOv2's keys, shapes
and token layout (registers after CLS, without a position embedding)."""
import pytest
import torch

from dino_core.models import build_vit
from dino_core.models.vit import VisionTransformer

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def tiny(seed=0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=56, patch_size=14, **TINY, **kw).eval()


def test_options_off_draw_the_same_weights_and_options_on_only_add_tensors():
    """The options' parameters are drawn after the DINO ViT's: a model with every option
    shares every DINO tensor bit for bit, and adds only DINOv2's keys."""
    plain = tiny().state_dict()
    full = tiny(layerscale=1e-5, num_register_tokens=4, mask_token=True).state_dict()
    added = set(full) - set(plain)
    assert set(plain) <= set(full)
    assert added == {"mask_token", "register_tokens"} | {
        f"blocks.{i}.{ls}.gamma" for i in range(2) for ls in ("ls1", "ls2")}
    assert all(torch.equal(full[k], v) for k, v in plain.items())


def test_layerscale_gammas_start_at_the_init_value():
    m = tiny(layerscale=1e-5)
    for blk in m.blocks:
        for ls in (blk.ls1, blk.ls2):
            assert ls.gamma.shape == (32,) and torch.all(ls.gamma == 1e-5)


def test_layerscale_scales_each_residual_branch():
    """Block output = x + g1 * attn(norm1(x)), then + g2 * mlp(norm2(.)), written out."""
    m = tiny(layerscale=0.5)
    blk = m.blocks[0]
    with torch.no_grad():
        blk.ls1.gamma.uniform_(-1, 1)
        blk.ls2.gamma.uniform_(-1, 1)
        x = torch.randn(2, 5, 32)
        y = x + blk.ls1.gamma * blk.attn(blk.norm1(x))
        want = y + blk.ls2.gamma * blk.mlp(blk.norm2(y))
        assert torch.allclose(blk(x), want, atol=1e-6)


def test_registers_sit_after_cls_without_position_embedding():
    m = tiny(num_register_tokens=4)
    x = torch.randn(2, 3, 42, 56)  # 3 x 4 patches: the position grid is resized
    with torch.no_grad():
        tokens = m.prepare_tokens(x)
        pos = m.interpolate_pos_encoding(42, 56)                      # (1, 1 + 12, D)
        patches = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert tokens.shape == (2, 1 + 4 + 12, 32)
    assert torch.equal(tokens[:, 0], (m.cls_token + pos[:, :1])[:, 0].expand(2, -1))
    assert torch.equal(tokens[:, 1:5], m.register_tokens.expand(2, -1, -1))  # no position
    assert torch.allclose(tokens[:, 5:], patches + pos[:, 1:], atol=1e-6)


def test_forward_tokens_and_evaluation_views_with_registers():
    m = tiny(num_register_tokens=4)
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        full = m.forward_features(x)                                  # (B, 1 + 4 + 12, D)
        tokens = m.forward_tokens(x)
        last = m.get_intermediate_layers(x, n=1)[0]
        attn = m.get_last_selfattention(x)
    assert full.shape == (2, 17, 32)
    assert torch.equal(tokens["cls"], full[:, 0]) and torch.equal(tokens["cls"], m(x))
    assert torch.equal(tokens["registers"], full[:, 1:5])
    assert torch.equal(tokens["patches"], full[:, 5:])
    assert torch.equal(last, torch.cat((full[:, :1], full[:, 5:]), dim=1))  # no registers
    assert attn.shape == (2, 2, 13, 13)
    assert torch.all(attn.sum(-1) <= 1 + 1e-6)  # the registers' share is left out


def test_swiglu_keys_shapes_and_values():
    """DINOv2's fused SwiGLU: w12 = [W1; W2] (rows), out = w3(silu(x W1^T + b1) * (x W2^T + b2));
    the hidden width for ViT-g/14 is 4096 (2/3 of 4 x 1536, a multiple of 8)."""
    with torch.device("meta"):
        g = build_vit("vit_giant2", 14, img_size=518, ffn_layer="swiglu", layerscale=1.0,
                      mask_token=True)
    sd = g.state_dict()
    assert sd["blocks.39.mlp.w12.weight"].shape == (8192, 1536)
    assert sd["blocks.39.mlp.w12.bias"].shape == (8192,)
    assert sd["blocks.39.mlp.w3.weight"].shape == (1536, 4096)
    assert sd["pos_embed"].shape == (1, 37 * 37 + 1, 1536)
    assert not any(".fc1." in k or ".fc2." in k for k in sd)
    assert len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) == 40
    assert 1.13e9 < sum(p.numel() for p in g.parameters()) < 1.14e9  # "1.1B"

    m = tiny(ffn_layer="swiglu")
    mlp = m.blocks[0].mlp
    hidden = mlp.w3.weight.shape[1]
    assert hidden == 88  # int(128 * 2 / 3) = 85, rounded up to a multiple of 8
    x = torch.randn(3, 32)
    w1, w2 = mlp.w12.weight[:hidden], mlp.w12.weight[hidden:]
    b1, b2 = mlp.w12.bias[:hidden], mlp.w12.bias[hidden:]
    gate = x @ w1.T + b1
    want = (gate * torch.sigmoid(gate) * (x @ w2.T + b2)) @ mlp.w3.weight.T + mlp.w3.bias
    assert torch.allclose(mlp(x), want, atol=1e-5)


def test_drop_path_rates_linear_or_uniform():
    m = VisionTransformer(img_size=28, patch_size=14, embed_dim=16, depth=5, num_heads=2,
                          drop_path_rate=0.4)
    assert [b.drop_path.p for b in m.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    u = VisionTransformer(img_size=28, patch_size=14, embed_dim=16, depth=5, num_heads=2,
                          drop_path_rate=0.4, drop_path_uniform=True)
    assert [b.drop_path.p for b in u.blocks] == [0.4] * 5


def test_mask_token_with_registers_masks_the_patches_only():
    m = tiny(num_register_tokens=2, mask_token=True)
    with torch.no_grad():
        m.mask_token.normal_()
        x = torch.randn(1, 3, 28, 28)                                 # 2 x 2 patches
        masks = torch.tensor([[True, False, False, True]])
        tokens = m.prepare_tokens(x, masks)
        pos = m.interpolate_pos_encoding(28, 28)
    assert torch.allclose(tokens[0, 3], m.mask_token[0] + pos[0, 1], atol=1e-6)
    assert torch.allclose(tokens[0, 6], m.mask_token[0] + pos[0, 4], atol=1e-6)
    assert torch.equal(tokens[0, 1:3], m.register_tokens[0])


@pytest.mark.parametrize("kw,match", [(dict(ffn_layer="geglu"), "unknown ffn_layer"),
                                      (dict(num_register_tokens=-1), ">= 0"),
                                      (dict(layerscale=-1.0), ">= 0")])
def test_bad_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_released_grid_at_patch_14():
    """DINOv2's released models: 518 px = 37 x 37 patches of 14 px; their input at 224 px
    has 16 x 16 patches, the position grid resized to it."""
    m = VisionTransformer(img_size=518, patch_size=14, **TINY)
    assert m.pos_embed.shape == (1, 1370, 32)
    pe = m.interpolate_pos_encoding(224, 224)
    assert pe.shape == (1, 257, 32)
    assert torch.equal(pe[:, 0], m.pos_embed[:, 0])
