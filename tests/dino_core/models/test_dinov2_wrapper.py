"""DINOv2Wrapper: the global crops masked through the backbone together, the local crops per
resolution, one head pass over CLS (and, with a shared head, the picked patch tokens)."""
import torch

from dino_core.models import DINOHead, VisionTransformer
from dino_core.models.dinov2_wrapper import DINOv2Wrapper


def tiny(separate: bool) -> DINOv2Wrapper:
    torch.manual_seed(0)
    backbone = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                 mask_token=True)
    with torch.no_grad():
        backbone.mask_token.normal_()
    head = DINOHead(32, 12, hidden_dim=16, bottleneck_dim=8)
    return DINOv2Wrapper(backbone, head, DINOHead(32, 7, hidden_dim=16, bottleneck_dim=8)
                         if separate else None).eval()


def crops(batch=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, s, s, generator=g) for s in (32, 32, 16, 24, 24)]


def test_shared_head_outputs_are_the_separate_calls():
    model = tiny(separate=False)
    views = crops()
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[1, 0, :2] = masks[2, 3, 3] = True
    index = masks.reshape(-1).nonzero().squeeze(1)
    out = model(views, masks=masks, mask_index=index)
    with torch.no_grad():
        tokens = model.backbone.forward_tokens(torch.cat(views[:2]), masks)
        cls = torch.cat([tokens["cls"], model.backbone(views[2]),
                         model.backbone(torch.cat(views[3:]))])
        picked = tokens["patches"].reshape(-1, 32)[index]
    assert out.cls_logits.shape == (10, 12) and out.patch_logits.shape == (3, 12)
    torch.testing.assert_close(out.cls_logits, model.head(cls), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.patch_logits, model.head(picked), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.global_cls, tokens["cls"])
    unmasked = model(views, mask_index=index)  # the teacher's call: masks only on input
    assert not torch.allclose(unmasked.patch_logits, out.patch_logits)


def test_separate_head_and_no_patches():
    model = tiny(separate=True)
    assert any(k.startswith("ibot_head.") for k in model.state_dict())
    views = crops()[:2]
    out = model(views, mask_index=torch.tensor([0, 5, 31]))
    assert out.cls_logits.shape == (4, 12) and out.patch_logits.shape == (3, 7)
    assert model(views).patch_logits is None
    assert not any(k.startswith("ibot_head.") for k in tiny(separate=False).state_dict())
