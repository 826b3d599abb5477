"""The DINOv2 recipe: its models, its three terms against a by-hand composition of the
backbone, heads and the losses' plain twins, a step of two micro-batches against one batch,
its checkpoint entry, and its config checks."""
from pathlib import Path

import pytest
import torch

from dino_core.config import load_config
from dino_core.formats.files import CheckpointError
from dino_core.loss import MaskedPositions, koleo_loss, reference_patch_ce, sinkhorn_knopp
from dino_core.recipes.dinov2 import DINOv2Recipe
from pipelines.config_io import ConfigError
from pipelines.sampling.masks import draw_batch_masks
from tests.dino_core.train.train_helpers import TINY_DINOV2, step_inputs, tiny_overrides

UNUSED = Path("/nonexistent")


def tiny_cfg(*extra):
    return load_config(None, tiny_overrides(UNUSED, UNUSED) + TINY_DINOV2 + list(extra))


def tiny_recipe(*extra) -> DINOv2Recipe:
    return DINOv2Recipe.from_config(tiny_cfg(*extra))


def batch_of(cfg, batch=4, seed=0, mask_batch=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 3, s, s, generator=g) for s in (32, 32, 16, 16)]
    masks = draw_batch_masks(cfg.data.aug, 1, 0, 0, mask_batch, batch)
    return step_inputs(views, epoch=0, iteration=0, lr=0.0, wd=0.0, momentum=0.9,
                       teacher_temp=0.05, masks=masks)


def test_models_are_a_student_and_its_gradient_free_copy_with_mask_token_and_heads():
    torch.manual_seed(0)
    student, teacher = tiny_recipe().build_models()
    keys = student.state_dict().keys()
    assert keys == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert "backbone.mask_token" in keys
    assert student.ibot_head.last_layer.weight_v.shape[0] == 48
    assert student.head.last_layer.weight_v.shape[0] == 64
    plain, _ = tiny_recipe("dinov2.ibot_weight=0").build_models()
    assert "backbone.mask_token" not in plain.state_dict()  # DINO's backbone layout
    assert not any(k.startswith("ibot_head.") for k in plain.state_dict())


def by_hand(recipe, student, teacher, batch, temp):
    """The three terms from the backbone and heads called directly, Sinkhorn-Knopp, a pair
    loop for the image-level term, the patch loss's autograd twin and KoLeo."""
    s = recipe.settings
    B = batch.size
    pos = MaskedPositions.from_masks(batch.masks)
    with torch.no_grad():
        t_tok = teacher.backbone.forward_tokens(torch.cat(batch.views[:2]))
        t_cls = teacher.head(t_tok["cls"])
        t_flat = t_tok["patches"].reshape(-1, t_tok["patches"].shape[-1])
        t_patch = teacher.ibot_head(t_flat[pos.index])
    (q_cls,) = sinkhorn_knopp([t_cls], temp)
    (q_patch,) = sinkhorn_knopp([t_patch], temp)
    s_tok = student.backbone.forward_tokens(torch.cat(batch.views[:2]), batch.masks)
    s_cls = [s_tok["cls"]] + [student.backbone(v) for v in batch.views[2:]]
    logits = student.head(torch.cat(s_cls))
    views = len(batch.views)
    pairs = [(t, v) for t in range(2) for v in range(views) if v != t]
    dino = sum(-(q_cls[t * B:(t + 1) * B] * torch.log_softmax(
        logits[v * B:(v + 1) * B] / s.student_temp, -1)).sum(-1).mean() for t, v in pairs)
    dino = dino / len(pairs)
    p_logits = student.ibot_head(s_tok["patches"].reshape(-1, s_tok["patches"].shape[-1])
                                 [pos.index])
    ibot = reference_patch_ce(p_logits, q_patch, pos.weight, s.student_temp)
    koleo = koleo_loss(s_tok["cls"][:B]) + koleo_loss(s_tok["cls"][B:])
    return {"dino": s.dino_weight * dino, "ibot": s.ibot_weight * ibot,
            "koleo": s.koleo_weight * koleo}


def test_the_three_terms_are_the_by_hand_composition():
    torch.manual_seed(0)
    cfg = tiny_cfg("dinov2.koleo_weight=0.3", "dinov2.ibot_weight=0.7")
    recipe = DINOv2Recipe.from_config(cfg)
    student, teacher = recipe.build_models()
    student.eval()  # no drop path: the by-hand forward sees the same network
    batch, at = batch_of(cfg)
    assert batch.masks.any()
    terms = recipe.losses(batch, student, teacher, at)
    assert list(terms) == ["dino", "ibot", "koleo"]
    want = by_hand(recipe, student, teacher, batch, 0.05)
    for name in terms:
        torch.testing.assert_close(terms[name], want[name], rtol=1e-5, atol=1e-7)
    grads = torch.autograd.grad(sum(terms.values()), student.backbone.mask_token)
    want_grads = torch.autograd.grad(sum(want.values()), student.backbone.mask_token)
    torch.testing.assert_close(grads, want_grads, rtol=1e-4, atol=1e-8)


def test_a_step_of_two_micro_batches_normalises_and_updates_like_one_batch():
    """Teacher targets over both micro-batches equal one batch's (Sinkhorn-Knopp over the
    union); the patch and image terms of equal halves average to the whole. (The EMA
    centering's step: tests/dino_core/loss/test_loss_sinkhorn.py.) KoLeo is not split-
    invariant: its neighbours are within a micro-batch (DINOv2: within a rank's batch)."""
    torch.manual_seed(0)
    cfg = tiny_cfg("dinov2.koleo_weight=0")
    whole_recipe, split_recipe = (DINOv2Recipe.from_config(cfg) for _ in range(2))
    student, teacher = whole_recipe.build_models()
    student.eval()
    batch, at = batch_of(cfg, batch=4)
    halves = []
    for i in (0, 2):
        rows = [i, i + 1, 4 + i, 4 + i + 1]  # this half's samples in both global views
        halves.append(step_inputs([v[i:i + 2] for v in batch.views], 0, 0, 0.0, 0.0, 0.9,
                                  0.05, masks=batch.masks[rows])[0])
    with torch.no_grad():
        (whole_t,) = whole_recipe.teacher_targets([batch], teacher, at)
        split_t = split_recipe.teacher_targets(halves, teacher, at)
    joined = torch.cat([t.cls_probs for t in split_t], dim=1)
    torch.testing.assert_close(joined, whole_t.cls_probs, rtol=1e-5, atol=1e-7)
    whole = whole_recipe.student_losses(batch, student, whole_t, at)
    parts = [split_recipe.student_losses(h, student, t, at) for h, t in zip(halves, split_t)]
    for name in ("dino", "ibot"):
        torch.testing.assert_close((parts[0][name] + parts[1][name]).detach() / 2,
                                   whole[name].detach(), rtol=1e-5, atol=1e-7)


def test_checkpoint_entry_round_trips_and_its_absence_is_one_clear_error():
    recipe = tiny_recipe("dinov2.centering=ema")
    with torch.no_grad():
        recipe.cls_centering.center.normal_()
        recipe.patch_centering.center.normal_()
    entries = recipe.state_dict()
    assert list(entries) == ["dinov2"]
    assert entries["dinov2"]["patch_center"].shape == (1, 48)
    other = tiny_recipe("dinov2.centering=ema")
    other.load_state_dict(entries, "c.pth")
    assert torch.equal(other.cls_centering.center, recipe.cls_centering.center)
    assert torch.equal(other.patch_centering.center, recipe.patch_centering.center)
    with pytest.raises(CheckpointError, match="c.pth is not a dino-train checkpoint.*dinov2"):
        other.load_state_dict({"dino_loss": {"center": torch.zeros(1, 64)}}, "c.pth")


def test_a_batch_without_masks_is_one_clear_error():
    cfg = tiny_cfg()
    batch, at = batch_of(cfg)
    batch.masks = None
    with pytest.raises(ValueError, match="needs Batch.masks.*data.aug.masking"):
        DINOv2Recipe.from_config(cfg).teacher_targets([batch], None, at)


@pytest.mark.parametrize("extra, field", [
    (["data.aug.masking=null"], "data.aug.masking"),
    (["data.aug.masking={patch_size: 16}"], "data.aug.masking.patch_size"),
    (["model.use_bn_in_head=true"], "model.use_bn_in_head"),
    (["dinov2.warmup_teacher_temp_epochs=5"], "dinov2.warmup_teacher_temp_epochs"),
    (["dinov2.centering=swav"], "dinov2.centering"),
    (["dinov2.koleo_weight=-1"], "dinov2.koleo_weight"),
    (["dinov2.patch_impl=triton"], "dinov2.patch_impl"),
    (["dinov2.dino_weight=0"], "dinov2.dino_weight"),
])
def test_config_checks_name_the_field(extra, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        tiny_cfg(*extra)


def test_the_quickstart_dinov2_preset_is_the_dino_quickstart_with_the_dinov2_recipe():
    """Same data, crops, schedule and batch as the DINO quickstart (so the two k-NN figures
    compare); the recipe, its masks at the model's patch size and all three terms on."""
    from dino_core.cli.train import resolve_config_path
    v2 = load_config(resolve_config_path("quickstart-dinov2"), [])
    v1 = load_config(resolve_config_path("quickstart"), [])
    assert (v2.recipe, v1.recipe) == ("dinov2", "dino")
    assert v2.data.aug.masking.patch_size == v2.model.patch_size
    assert v2.data.aug.with_overrides(masking=None) == v1.data.aug
    assert (v2.epochs, v2.data.batch_size, v2.optim) == (v1.epochs, v1.data.batch_size, v1.optim)
    assert min(v2.dinov2.dino_weight, v2.dinov2.ibot_weight, v2.dinov2.koleo_weight) > 0


def test_a_short_run_with_dinov2s_backbone_and_optimiser_logs_each_term(tmp_path):
    """The trainer end to end with the recipe, DINOv2's backbone options (LayerScale,
    registers) and optimiser (layer-wise decay, patch-embedding lr, per-part clipping over
    backbone / head / iBOT head, last layer frozen by lr 0): every term is logged on its own
    and the total is their sum."""
    import json
    import math

    from dino_core.train.loop import train
    from tests.pipelines.images import write_image_folder

    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=2)
    extra = TINY_DINOV2 + ["model.layerscale=1.0e-5", "model.register_tokens=2",
                           "optim.layer_decay=0.9", "optim.patch_embed_lr_mult=0.2",
                           "optim.clip_mode=per_part", "optim.freeze_mode=zero_lr"]
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(data, out, epochs=1, batch=2, iters=2) + extra))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        terms = [r[f"loss_{t}"] for t in ("dino", "ibot", "koleo")]
        assert all(math.isfinite(t) for t in terms)
        assert math.isclose(r["loss"], sum(terms), rel_tol=1e-5)
