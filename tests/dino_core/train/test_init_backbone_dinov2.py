"""--init-backbone with DINOv2 weights: the backbone options must match the run's (one error
naming both); the mask token is the one tensor a start may leave out."""
import pytest
import torch

from dino_core.formats.files import CheckpointError
from dino_core.models.vit import VisionTransformer
from dino_core.train.init_backbone import load_init_backbone


def vit(seed=0, **kw):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, **kw)


def test_dinov2_weights_load_into_a_model_with_the_same_options():
    src = vit(seed=1, layerscale=1e-5, num_register_tokens=4, mask_token=True)
    dst = vit(seed=2, layerscale=1e-5, num_register_tokens=4, mask_token=True)
    load_init_backbone(dst, src.state_dict(), "w.pth")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


@pytest.mark.parametrize("file_kw,run_kw,named", [
    (dict(num_register_tokens=4), dict(), "model.register_tokens=4"),
    (dict(layerscale=1e-5), dict(), "model.layerscale on"),
    (dict(ffn_layer="swiglu"), dict(), "model.ffn_layer=swiglu"),
    (dict(), dict(layerscale=1e-5), "model.layerscale off"),
])
def test_other_options_are_one_error_naming_both(file_kw, run_kw, named):
    with pytest.raises(CheckpointError, match="w.pth holds a backbone with") as e:
        load_init_backbone(vit(**run_kw), vit(seed=1, **file_kw).state_dict(), "w.pth")
    assert named in str(e.value) and "this run builds" in str(e.value)


def test_the_mask_token_is_dropped_or_kept_at_its_init():
    src = vit(seed=1, layerscale=1e-5, mask_token=True)
    with torch.no_grad():
        src.mask_token.fill_(3.0)
    no_mask = vit(seed=2, layerscale=1e-5)                   # a recipe that never masks
    load_init_backbone(no_mask, src.state_dict(), "w.pth")
    assert "mask_token" not in no_mask.state_dict()
    assert torch.equal(no_mask.blocks[1].ls2.gamma, src.blocks[1].ls2.gamma)
    masked = vit(seed=2, mask_token=True)                    # DINO weights in a masking run
    load_init_backbone(masked, vit(seed=1).state_dict(), "w.pth")
    assert torch.equal(masked.mask_token, torch.zeros(1, 32))


@pytest.mark.parametrize("registers", [0, 4])
def test_a_released_file_starts_a_224_grid_run_with_dinov2s_features(tmp_path, monkeypatch,
                                                                      registers):
    """An official DINOv2 backbone file (518 px grid, with or without registers) read by
    --init-backbone into a run's ViT with a 224 px grid (16 x 16 at patch 14): the position
    embedding is resized once, at load, as DINOv2 resizes it for a 224 px input, so the
    run's features at 224 px equal DINOv2's forward on the file's weights."""
    from dino_core.formats.files import save_checkpoint
    from dino_core.models import ARCHS, build_vit
    from dino_core.train.init_backbone import read_init_backbone
    from tests.dino_core.formats.test_dinov2_layout import (DEPTH, DIM, HEADS, dinov2_forward,
                                                            official_state)
    monkeypatch.setitem(ARCHS, "vit_micro", dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    sd = official_state(registers, seed=11)
    path = tmp_path / "dinov2_micro14_pretrain.pth"
    save_checkpoint(sd, path)
    offset, aa = (0.0, True) if registers else (0.1, False)
    model = build_vit("vit_micro", 14, img_size=224, layerscale=1e-5, mask_token=True,
                      num_register_tokens=registers, interpolate_offset=offset,
                      interpolate_antialias=aa)
    load_init_backbone(model, read_init_backbone(path, "vit_micro", 14), path)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, DIM)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        got = model.double().eval().forward_tokens(x)
    cls, regs, patches = dinov2_forward(sd, x, offset, aa)
    torch.testing.assert_close(got["cls"], cls, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got["registers"], regs, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got["patches"], patches, atol=1e-9, rtol=1e-9)
