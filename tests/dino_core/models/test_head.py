import torch

from dino_core.models import DINOHead, MultiCropWrapper, vit_tiny


def test_head_keys_and_shapes_match_official():
    h = DINOHead(384, 65536)
    got = {k: tuple(v.shape) for k, v in h.state_dict().items()}
    assert got == {"mlp.0.weight": (2048, 384), "mlp.0.bias": (2048,),
                   "mlp.2.weight": (2048, 2048), "mlp.2.bias": (2048,),
                   "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
                   "last_layer.weight_g": (65536, 1), "last_layer.weight_v": (65536, 256)}
    assert 22.0e6 < sum(p.numel() for p in h.parameters()) < 22.6e6


def test_head_with_bn_key_layout():
    keys = set(DINOHead(192, 128, use_bn=True).state_dict())
    assert {"mlp.0.weight", "mlp.1.weight", "mlp.3.weight", "mlp.4.weight", "mlp.6.weight"} <= keys


def test_weight_norm_last_layer_is_frozen_at_one_and_normalises_rows():
    h = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16)
    assert not h.last_layer.weight_g.requires_grad
    assert torch.all(h.last_layer.weight_g == 1)
    w = h.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(50), atol=1e-5)
    free = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad


def test_head_output_equals_explicit_computation():
    torch.manual_seed(0)
    h = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(4, 16)
    z = torch.nn.functional.normalize(h.mlp(x), dim=-1)
    v = h.last_layer.weight_v
    expected = z @ (v / v.norm(dim=1, keepdim=True)).T
    assert torch.allclose(h(x), expected, atol=1e-6)


def test_multicrop_runs_backbone_once_per_resolution():
    torch.manual_seed(0)
    backbone = vit_tiny(patch_size=16).eval()
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    w = MultiCropWrapper(backbone, DINOHead(192, 20, hidden_dim=32, bottleneck_dim=8)).eval()
    crops = [torch.randn(2, 3, 64, 64) for _ in range(2)] + [torch.randn(2, 3, 32, 32) for _ in range(3)]
    out = w(crops)
    assert out.shape == (10, 20)
    assert calls == [torch.Size([4, 3, 64, 64]), torch.Size([6, 3, 32, 32])]
    # same result as one crop at a time
    single = torch.cat([w.head(backbone(c)) for c in crops])
    assert torch.allclose(out, single, atol=1e-5)
