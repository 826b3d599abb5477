"""DINOv2's clipping (one global norm per part of the student) and last-layer freeze (lr 0,
AdamW moments still updated), next to DINO's (per tensor, gradients dropped), through the
training step."""
import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper
from dino_core.models.vit import VisionTransformer
from dino_core.recipes.dino import DINORecipe
from dino_core.train.optim import (apply_last_layer_freeze, build_optimizer, clip_parts,
                                   clip_per_part, clip_per_part_reference, param_groups,
                                   set_hyperparams)
from dino_core.train.step import TrainStep
from tests.dino_core.train.train_helpers import step_inputs

CPU = torch.device("cpu")


def student(seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=16, depth=1, num_heads=2,
                            layerscale=1e-5)
    return MultiCropWrapper(vit, DINOHead(16, 8, hidden_dim=12, bottleneck_dim=4,
                                          norm_last_layer=False))


def with_grads(model, scales):
    """Random gradients, each part's scaled by its entry of ``scales`` (large: clipped)."""
    g = torch.Generator().manual_seed(1)
    for part, s in zip(clip_parts(model), scales):
        for p in part:
            p.grad = s * torch.randn(p.shape, generator=g)
    return model


def test_parts_are_the_backbone_and_the_head():
    m = student()
    parts = clip_parts(m)
    assert [len(p) for p in parts] == [len(list(m.backbone.parameters())),
                                       len(list(m.head.parameters()))]


@pytest.mark.parametrize("scales", [(10.0, 10.0), (10.0, 1e-3), (1e-3, 1e-3)])
def test_clip_per_part_equals_the_loop_and_torchs_clip_grad_norm(scales):
    fast, loop, torchs = (with_grads(student(), scales) for _ in range(3))
    clip_per_part(clip_parts(fast), 3.0)
    norms = clip_per_part_reference(clip_parts(loop), 3.0)
    for part in clip_parts(torchs):
        torch.nn.utils.clip_grad_norm_(part, 3.0)
    for a, b, c in zip(fast.parameters(), loop.parameters(), torchs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a.grad, c.grad, rtol=1e-6, atol=1e-9)
    for part, norm, s in zip(clip_parts(fast), norms, scales):
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part])).item()
        # a part over the bound ends at it; one under it is left as it was
        assert after == pytest.approx(3.0 if norm > 3.0 else norm, rel=1e-5)
        assert (norm > 3.0) == (s == 10.0)


def test_split_groups_mark_the_last_layer_only():
    m = student()
    groups = param_groups(m, split_last_layer=True)
    marked = {id(p) for g in groups if g["last_layer"] for p in g["params"]}
    assert marked == {id(p) for n, p in m.named_parameters() if "last_layer" in n}
    assert all(g["lr_scale"] == 1.0 for g in groups)


def adamw_step(mode, epoch_frozen):
    m = with_grads(student(), (1.0, 1.0))
    opt = build_optimizer(m, "adamw", CPU, split_last_layer=mode == "zero_lr")
    set_hyperparams(opt, 0.1, 0.5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    if epoch_frozen:
        apply_last_layer_freeze(m, opt, mode)
    opt.step()
    return m, opt, before


@pytest.mark.parametrize("mode", ["drop_grad", "zero_lr"])
def test_the_frozen_last_layer_does_not_move_and_the_rest_does(mode):
    m, opt, before = adamw_step(mode, epoch_frozen=True)
    for name, p in m.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == ("last_layer" not in name), name
        state = opt.state.get(p, {})
        if "last_layer" in name:
            # DINOv2's freeze keeps AdamW's moments going; DINO's leaves no state
            assert (mode == "zero_lr") == bool(state) and (
                not state or state["exp_avg"].abs().sum() > 0)


def test_zero_lr_lasts_one_step_and_needs_split_groups():
    m, opt, before = adamw_step("zero_lr", epoch_frozen=True)
    set_hyperparams(opt, 0.1, 0.5)  # the next step's values: the last layer's lr is back
    assert all(g["lr"] == 0.1 for g in opt.param_groups)
    plain = build_optimizer(m, "adamw", CPU)
    with pytest.raises(ValueError, match="split_last_layer=True"):
        apply_last_layer_freeze(m, plain, "zero_lr")
    with pytest.raises(ValueError, match="unknown freeze mode 'none'"):
        apply_last_layer_freeze(m, plain, "none")


def test_the_step_clips_per_part_and_freezes_by_lr():
    """One DINOv2-style step: the gradients the optimizer sees are the unclipped ones
    clipped per part (computed here from a twin), and the last layer keeps its weights."""
    views = [torch.randn(2, 3, 28, 28) for _ in range(2)]
    models = []
    for mode in ("per_part", None):
        s, t = student(), student().requires_grad_(False)
        opt = build_optimizer(s, "adamw", CPU, split_last_layer=True)
        step = TrainStep(DINORecipe(DINOLoss(8, 2, impl="reference")), s, t, opt, CPU,
                         clip_grad=3e-3 if mode else 0.0, clip_mode=mode or "per_tensor",
                         freeze_mode="zero_lr")
        seen = {}
        step.optimizer.step = lambda s=s, seen=seen: seen.update(
            {n: p.grad.clone() for n, p in s.named_parameters()})
        step(*step_inputs(views, epoch=0, iteration=0, lr=1e-3, wd=0.04, momentum=0.99))
        models.append((s, seen, opt))
    (s, clipped, opt), (twin, raw, _) = models
    for n, p in twin.named_parameters():
        p.grad = raw[n]
    clip_per_part_reference(clip_parts(twin), 3e-3)
    for n, p in twin.named_parameters():
        torch.testing.assert_close(clipped[n], p.grad, rtol=1e-5, atol=1e-10)
    assert not all(torch.equal(clipped[n], raw[n]) for n in raw)  # the bound bit
    assert all(g["lr"] == 0.0 for g in opt.param_groups if g["last_layer"])
    with pytest.raises(ValueError, match="unknown clip mode 'global'"):
        TrainStep(DINORecipe(DINOLoss(8, 2)), s, student(), opt, CPU, clip_mode="global")
