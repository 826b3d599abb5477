"""Attention maps: shapes, normalisation, an explicit recomputation, masks, and the PNGs."""
import numpy as np
import pytest
import torch
from PIL import Image

from dino_core.eval.attention import (attention_pictures, cls_attention, mass_masks,
                                      prepare_image, upsample_nearest)
from dino_core.models import VisionTransformer


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3).eval()


def explicit_cls_attention(vit, x):
    """The last block's CLS-query softmax, written out from the weights (no helper methods)."""
    tokens = vit.prepare_tokens(x[None])
    for blk in vit.blocks[:-1]:
        tokens = blk(tokens)
    last = vit.blocks[-1]
    h = last.norm1(tokens)[0]                                  # (1+N, D)
    qkv = h @ last.attn.qkv.weight.T + last.attn.qkv.bias      # (1+N, 3D)
    d = h.shape[-1]
    hs = d // vit.num_heads
    out = []
    for head in range(vit.num_heads):
        q = qkv[0, head * hs:(head + 1) * hs]                  # the CLS query
        k = qkv[:, d + head * hs:d + (head + 1) * hs]          # (1+N, hs)
        weights = torch.softmax(k @ q / hs ** 0.5, dim=0)[1:]  # drop CLS-to-CLS
        out.append(weights / weights.sum())
    return torch.stack(out)


@pytest.mark.parametrize("h,w", [(32, 32), (40, 56), (24, 72)])
def test_cls_attention_shape_sum_and_values(tiny_vit, h, w):
    x = torch.randn(3, h, w)
    maps = cls_attention(tiny_vit, x)
    assert maps.shape == (3, h // 8, w // 8)
    assert torch.allclose(maps.flatten(1).sum(dim=1), torch.ones(3), atol=1e-5)
    assert (maps >= 0).all()
    want = explicit_cls_attention(tiny_vit, x).reshape(maps.shape)
    assert torch.allclose(maps, want, atol=1e-5)


def loop_masks(maps, threshold):
    """Per head: add patches from the highest down until their mass reaches the threshold."""
    out = torch.zeros(maps.shape, dtype=torch.bool)
    for h in range(maps.shape[0]):
        flat = (maps[h] / maps[h].sum()).flatten().tolist()
        mass = 0.0
        for i in sorted(range(len(flat)), key=lambda j: -flat[j]):
            if mass >= threshold:
                break
            out[h].view(-1)[i] = True
            mass += flat[i]
    return out


@pytest.mark.parametrize("threshold", [0.1, 0.6, 0.9, 0.99])
def test_masks_keep_the_fewest_top_patches_holding_the_mass(threshold):
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(4, 5, 7, generator=g) ** 3
    masks = mass_masks(maps, threshold)
    assert torch.equal(masks, loop_masks(maps, threshold))
    for h in range(4):
        kept = maps[h][masks[h]].sum() / maps[h].sum()
        assert kept >= threshold - 1e-6
        dropped_smallest = kept - maps[h][masks[h]].min() / maps[h].sum()
        assert dropped_smallest < threshold
    assert mass_masks(maps, 1.0).all()
    with pytest.raises(ValueError, match="threshold"):
        mass_masks(maps, 0.0)


def test_upsample_and_prepare_image():
    maps = torch.arange(6.0).reshape(1, 2, 3)
    up = upsample_nearest(maps, 4)
    assert up.shape == (1, 8, 12)
    assert torch.equal(up[0, ::4, ::4], maps[0]) and torch.equal(up[0, 3, 11], maps[0, 0, 2])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 83, 3), dtype=np.uint8))
    x, pic = prepare_image(img, patch_size=8)
    assert x.shape == (3, 48, 80) and pic.size == (80, 48)
    x, pic = prepare_image(img, patch_size=8, image_size=64)
    assert pic.size[1] == 64 and pic.size[0] % 8 == 0 and x.shape[1:] == (64, pic.size[0])
    with pytest.raises(ValueError, match="smaller than one"):
        prepare_image(img.resize((5, 5)), patch_size=8)


def test_pictures_are_written_for_every_head(tiny_vit, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    written = attention_pictures(tiny_vit, tmp_path / "in.png", tmp_path / "out",
                                 image_size=None, threshold=0.6)
    names = sorted(p.name for p in written)
    assert names == sorted(["image.png", "grid.png"] + [f"attn-head{i}.png" for i in range(3)]
                           + [f"mask-head{i}.png" for i in range(3)])
    with Image.open(tmp_path / "out" / "attn-head0.png") as im:
        assert im.size == (64, 40) and im.mode == "RGB"
    with Image.open(tmp_path / "out" / "grid.png") as im:
        assert im.size[1] == 2 * 224 and im.size[0] == 4 * round(64 * 224 / 40)
    with Image.open(tmp_path / "out" / "mask-head1.png") as m, \
            Image.open(tmp_path / "out" / "image.png") as orig:
        changed = (np.asarray(m) != np.asarray(orig)).any(axis=-1)
    assert 0 < changed.mean() < 1  # some patches kept as they are, the rest darkened
    with pytest.raises(ValueError, match="not found"):
        attention_pictures(tiny_vit, tmp_path / "nope.jpg", tmp_path / "out")
