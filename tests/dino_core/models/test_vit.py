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
    assert set(ARCHS) == {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"}


def test_forward_tokens_split_the_normed_tokens_and_cls_equals_forward():
    torch.manual_seed(0)
    m = vit_tiny(patch_size=16).eval()
    x = torch.randn(2, 3, 64, 48)
    tokens = m.forward_tokens(x)
    assert set(tokens) == {"cls", "registers", "patches"}
    assert tokens["cls"].shape == (2, 192) and tokens["registers"].shape == (2, 0, 192)
    assert tokens["patches"].shape == (2, 4 * 3, 192)
    assert torch.equal(tokens["cls"], m(x))
    assert torch.equal(tokens["patches"], m.forward_features(x)[:, 1:])


def test_mask_token_exists_only_when_asked_for():
    with torch.device("meta"):
        plain, masked = vit_tiny(), vit_tiny(mask_token=True)
    assert "mask_token" not in plain.state_dict() and plain.mask_token is None
    assert masked.state_dict()["mask_token"].shape == (1, 192)
    assert set(masked.state_dict()) - set(plain.state_dict()) == {"mask_token"}
    torch.manual_seed(0)
    a = vit_tiny()
    torch.manual_seed(0)
    b = vit_tiny(mask_token=True)  # the same random weights besides the (zero) token
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert torch.equal(b.mask_token, torch.zeros(1, 192))


def masked_tokens_by_hand(m, x, masks):
    """The masked forward written out: patch embeddings, masked rows replaced one by one by
    the mask token, CLS in front, position embeddings added, blocks, norm."""
    patches = m.patch_embed(x).clone()
    flat = masks.reshape(masks.shape[0], -1)
    for b in range(flat.shape[0]):
        for n in range(flat.shape[1]):
            if flat[b, n]:
                patches[b, n] = m.mask_token[0]
    cls = m.cls_token.expand(x.shape[0], -1, -1)
    tokens = torch.cat((cls, patches), dim=1) + m.interpolate_pos_encoding(*x.shape[-2:])
    for blk in m.blocks:
        tokens = blk(tokens)
    return m.norm(tokens)


def test_masked_patches_take_the_mask_token_as_written_out():
    torch.manual_seed(0)
    m = vit_tiny(patch_size=16, mask_token=True).eval()
    with torch.no_grad():
        m.mask_token.normal_()  # a trained token, not the zero init
    x = torch.randn(2, 3, 48, 64)  # a 3 x 4 grid
    masks = torch.zeros(2, 3, 4, dtype=torch.bool)
    masks[0, 1, 2] = masks[0, 0, 0] = masks[1, 2, 3] = True
    with torch.no_grad():
        got = m.forward_tokens(x, masks)
        want = masked_tokens_by_hand(m, x, masks)
        assert torch.allclose(got["cls"], want[:, 0], atol=1e-5)
        assert torch.allclose(got["patches"], want[:, 1:], atol=1e-5)
        assert torch.equal(m.forward_tokens(x, masks.reshape(2, 12))["patches"], got["patches"])
        unmasked = m.forward_tokens(x)
        assert not torch.allclose(got["cls"], unmasked["cls"])  # the mask reached the output
        nothing = m.forward_tokens(x, torch.zeros(2, 12, dtype=torch.bool))
        assert torch.equal(nothing["cls"], unmasked["cls"])


def test_masks_are_refused_without_a_mask_token_or_in_the_wrong_shape():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_token=True"):
        vit_tiny().forward_tokens(x, torch.zeros(1, 4, dtype=torch.bool))
    m = vit_tiny(mask_token=True)
    with pytest.raises(ValueError, match=r"bool \[1, 4\]"):
        m.forward_tokens(x, torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool \[1, 4\]"):
        m.forward_tokens(x, torch.zeros(1, 4))
