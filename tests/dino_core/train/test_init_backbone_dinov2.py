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
