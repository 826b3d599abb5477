import pytest
import torch

from dino_core.models import ARCHS, build_vit, vit_base, vit_small, vit_tiny


def official_backbone_shapes(dim: int, depth: int, patch: int, grid: int) -> dict:
    """The key names and shapes of an official DINO backbone, written out from the docs."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                       b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                       b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                       b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


@pytest.mark.parametrize("factory,dim", [(vit_tiny, 192), (vit_small, 384), (vit_base, 768)])
@pytest.mark.parametrize("patch", [16, 8])
def test_state_dict_matches_official_layout(factory, dim, patch):
    with torch.device("meta"):
        model = factory(patch_size=patch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_backbone_shapes(dim, 12, patch, 224 // patch)


def test_vit_small_has_150_tensors_and_21m_params():
    with torch.device("meta"):
        m = vit_small()
    assert len(m.state_dict()) == 150
    assert 21.0e6 < sum(p.numel() for p in m.parameters()) < 22.5e6


def test_forward_returns_normed_cls_token():
    torch.manual_seed(0)
    m = vit_tiny(patch_size=16).eval()
    x = torch.randn(2, 3, 64, 48)
    out = m(x)
    assert out.shape == (2, 192)
    assert torch.allclose(out, m.forward_features(x)[:, 0])


def test_pos_embed_interpolation_sizes_and_identity():
    m = vit_tiny(patch_size=16)
    assert m.interpolate_pos_encoding(224, 224) is m.pos_embed
    pe = m.interpolate_pos_encoding(96, 160)
    assert pe.shape == (1, 6 * 10 + 1, 192)
    assert torch.equal(pe[:, 0], m.pos_embed[:, 0])  # cls position untouched


def test_pos_embed_interpolation_of_a_constant_grid_is_constant():
    m = vit_tiny(patch_size=16)
    with torch.no_grad():
        m.pos_embed[:, 1:] = 0.5
    pe = m.interpolate_pos_encoding(96, 96)
    assert torch.allclose(pe[:, 1:], torch.full_like(pe[:, 1:], 0.5), atol=1e-5)


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    blk = vit_tiny().blocks[0].attn
    x = torch.randn(2, 17, 192)
    fast = blk(x)
    q, k, v = blk._qkv(x)
    attn = blk.attention_map(x)
    slow = blk.proj((attn @ v).transpose(1, 2).reshape(2, 17, 192))
    assert torch.allclose(fast, slow, atol=1e-5)


def test_last_selfattention_rows_sum_to_one_any_size():
    m = vit_tiny(patch_size=8).eval()
    a = m.get_last_selfattention(torch.randn(1, 3, 40, 56))
    assert a.shape == (1, 3, 5 * 7 + 1, 5 * 7 + 1)
    assert torch.allclose(a.sum(-1), torch.ones(1, 3, 36), atol=1e-5)


def test_intermediate_layers():
    m = vit_tiny().eval()
    outs = m.get_intermediate_layers(torch.randn(1, 3, 32, 32), n=4)
    assert len(outs) == 4 and outs[-1].shape == (1, 5, 192)
    assert torch.allclose(outs[-1], m.forward_features(torch.randn(1, 3, 32, 32)) * 0 + outs[-1])


def test_drop_path_only_in_training_and_linear_over_depth():
    m = build_vit("vit_tiny", 16, drop_path_rate=0.1)
    rates = [b.drop_path.p for b in m.blocks]
    assert rates[0] == 0 and abs(rates[-1] - 0.1) < 1e-7
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), m(x))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match="not a multiple of patch size"):
        vit_tiny()(torch.randn(1, 3, 30, 32))
    assert set(ARCHS) == {"vit_tiny", "vit_small", "vit_base", "vit_large"}
