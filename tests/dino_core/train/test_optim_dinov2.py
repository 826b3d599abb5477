"""DINOv2's parameter groups: per-parameter lr multipliers (layer-wise decay, patch-embedding
multiplier) against a hand computation, weight decay as DINOv2 decides it, lr and wd written
per group each step; DINO's groups and schedules unchanged with the defaults."""
import math

import pytest
import torch

from dino_core.config import LossConfig, OptimConfig
from dino_core.models import DINOHead, MultiCropWrapper
from dino_core.models.vit import VisionTransformer
from dino_core.train.optim import (build_optimizer, decayed, lr_scales, param_groups,
                                   set_hyperparams)
from dino_core.train.schedules import Schedules


def student(**kw):
    """A depth-2 DINOv2-style ViT (LayerScale, registers, mask token) with a DINO head."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=16, depth=2, num_heads=2,
                            layerscale=1e-5, num_register_tokens=2, mask_token=True, **kw)
    return MultiCropWrapper(vit, DINOHead(16, 8, hidden_dim=12, bottleneck_dim=4,
                                          norm_last_layer=False))


def hand_lr_multiplier(name: str) -> float:
    """Layer decay 0.5 over depth 2 (DINOv2: rate ** (depth + 1 - layer)), patch mult 0.2:
    written out per parameter."""
    if name.startswith("backbone.patch_embed."):
        return 0.5 ** 3 * 0.2                       # layer 0, times the patch multiplier
    if name in ("backbone.cls_token", "backbone.pos_embed", "backbone.mask_token",
                "backbone.register_tokens"):
        return 0.5 ** 3                             # layer 0
    if name.startswith("backbone.blocks.0."):
        return 0.5 ** 2                             # layer 1
    if name.startswith("backbone.blocks.1."):
        return 0.5                                  # layer 2
    return 1.0                                      # final norm (layer 3) and the head


def dinov2_no_decay(name: str) -> bool:
    """DINOv2's rule (get_params_groups_with_decay): bias, norm or gamma in the name."""
    return name.endswith(".bias") or "norm" in name or "gamma" in name


def test_lr_and_wd_per_parameter_equal_the_hand_computation():
    m = student()
    opt = build_optimizer(m, "adamw", torch.device("cpu"), layer_decay=0.5,
                          patch_embed_lr_mult=0.2)
    set_hyperparams(opt, 0.1, 0.3)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(group_of) == len(names)                  # every trainable parameter, once
    for name, p in m.named_parameters():
        g = group_of[id(p)]
        assert math.isclose(g["lr"], 0.1 * hand_lr_multiplier(name), rel_tol=1e-12), name
        assert g["weight_decay"] == (0.0 if dinov2_no_decay(name) else 0.3), name
    # fused: one group per (multiplier, decayed) pair
    assert len(opt.param_groups) == len({(hand_lr_multiplier(n), dinov2_no_decay(n))
                                         for n in names})


def test_the_decay_rule_equals_dinov2s_on_every_parameter():
    for kw in ({}, {"ffn_layer": "swiglu"}):
        for name, p in student(**kw).named_parameters():
            assert decayed(name, p) == (not dinov2_no_decay(name)), name


def test_a_bare_vit_counts_its_own_layers():
    vit = student().backbone
    scales = lr_scales(vit, layer_decay=0.5, patch_embed_lr_mult=0.2)
    for name in scales:
        assert math.isclose(scales[name], hand_lr_multiplier("backbone." + name)), name


def test_one_adamw_step_moves_each_group_by_its_own_lr():
    """From a fresh state AdamW's first step is -lr * (g / (|g| + eps) + wd * p): each
    parameter moves by its own group's lr."""
    m = student()
    opt = build_optimizer(m, "adamw", torch.device("cpu"), layer_decay=0.5,
                          patch_embed_lr_mult=0.2)
    set_hyperparams(opt, 0.01, 0.0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for name, p in m.named_parameters():
        want = before[name] - 0.01 * hand_lr_multiplier(name) * (1 / (1 + 1e-8))
        assert torch.allclose(p.detach(), want, atol=1e-9, rtol=0), name


def test_defaults_keep_dinos_two_groups_without_extra_keys():
    m = student()
    groups = param_groups(m)
    assert len(groups) == 2 and [set(g) for g in groups] == [{"params"},
                                                             {"params", "weight_decay"}]
    opt = build_optimizer(m, "adamw", torch.device("cpu"))
    set_hyperparams(opt, 0.1, 0.3)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.3), (0.1, 0.0)]


def test_lr_scaling_linear_per_256_or_sqrt_per_1024():
    for scaling, want in (("linear", 0.004 * 512 / 256), ("sqrt", 0.004 * math.sqrt(0.5))):
        sch = Schedules.build(OptimConfig(lr=0.004, warmup_epochs=0, lr_scaling=scaling),
                              LossConfig(), epochs=2, iters_per_epoch=2, global_batch=512)
        assert math.isclose(sch.lr[0], want)


@pytest.mark.parametrize("field,value", [("layer_decay", 0.0), ("layer_decay", 1.5),
                                         ("patch_embed_lr_mult", 0.0), ("lr_scaling", "log"),
                                         ("clip_mode", "global"), ("freeze_mode", "none")])
def test_bad_optim_fields_name_the_field(field, value):
    from dino_core.config import TrainConfig
    from pipelines.config_io import ConfigError
    with pytest.raises(ConfigError, match=f"optim.{field}"):
        TrainConfig(optim=OptimConfig(**{field: value}))
