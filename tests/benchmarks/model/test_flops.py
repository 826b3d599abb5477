"""Analytic FLOP counts: a hand count, torch's own counter, and the published DINO figures."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.model.flops import (GPU_PEAK_TFLOPS, HeadShape, Peak, ViTShape, device_peak,
                              dino_step_flops, head_forward_flops, measure_matmul_peak, mfu,
                              vit_forward_flops)
from dino_core.models import DINOHead, VisionTransformer


def test_vit_forward_hand_count_tiny_config():
    # width 8, one block, patch 4, 8x8 input: N = 4 patches, T = 5 tokens, MLP hidden 32.
    embed = 2 * 4 * (3 * 4 * 4) * 8   # conv as a matmul: N x (3 p^2) @ (3 p^2) x D
    qkv = 2 * 5 * 8 * 24
    scores = 2 * 5 * 5 * 8            # q k^T over all heads
    weighted = 2 * 5 * 5 * 8          # attn @ v
    proj = 2 * 5 * 8 * 8
    mlp = 2 * 5 * 8 * 32 + 2 * 5 * 32 * 8
    assert vit_forward_flops(ViTShape(embed_dim=8, depth=1, patch_size=4), 8) == (
        embed + qkv + scores + weighted + proj + mlp) == 11552


@pytest.mark.parametrize("patch,res", [(4, 16), (8, 24), (5, 20)])
def test_vit_forward_matches_torch_flop_counter(patch, res):
    model = VisionTransformer(img_size=res, patch_size=patch, embed_dim=16, depth=2, num_heads=2)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, res, res))
    # torch's counter skips CPU scaled_dot_product_attention: add its two matmuls by hand.
    tokens = (res // patch) ** 2 + 1
    attention = 2 * 4 * tokens * tokens * 16
    assert counter.get_total_flops() + attention == vit_forward_flops(
        ViTShape(embed_dim=16, depth=2, patch_size=patch), res)


def test_head_matches_torch_flop_counter():
    head = DINOHead(24, out_dim=100, hidden_dim=32, bottleneck_dim=8)
    with FlopCounterMode(display=False) as counter:
        head(torch.randn(1, 24))
    assert counter.get_total_flops() == head_forward_flops(24, HeadShape(100, 32, 8))


def test_published_dino_step_costs():
    vit_s = dino_step_flops(ViTShape.from_arch("vit_small", 16)).total / 1e9
    vit_b = dino_step_flops(ViTShape.from_arch("vit_base", 16)).total / 1e9
    assert vit_s == pytest.approx(124, rel=0.15)
    assert vit_b == pytest.approx(474, rel=0.15)


def test_step_parts_and_inputs():
    shape = ViTShape.from_arch("vit_small", 16)
    s = dino_step_flops(shape, n_local=0)
    fwd = vit_forward_flops(shape, 224) + head_forward_flops(384, HeadShape())
    assert s.student_forward == 2 * fwd and s.student_backward == 4 * fwd
    assert s.teacher_forward == 2 * fwd and s.total == 8 * fwd
    with pytest.raises(ValueError, match="multiple of patch size"):
        vit_forward_flops(shape, 100)
    with pytest.raises(ValueError, match="unknown architecture"):
        ViTShape.from_arch("vit_huge", 16)


def test_mfu_and_peaks():
    assert mfu(1e9, 100.0, Peak(1e12, "test")) == pytest.approx(0.1)
    assert GPU_PEAK_TFLOPS["h200"][0] == 790.0 and GPU_PEAK_TFLOPS["a100"][0] == 312.0
    peak = measure_matmul_peak("cpu", n=128, iters=2)
    assert peak.flops_per_s > 0 and "measured" in peak.source
    assert "matmul" in device_peak("cpu").source
