"""The DINO recipe: its models, its one loss term computed as written out, its checkpoint
entry (``dino_loss``) and the check that it is there."""
from pathlib import Path

import pytest
import torch

from dino_core.formats.files import CheckpointError
from dino_core.loss import DINOLoss
from dino_core.recipes.dino import DINORecipe
from tests.dino_core.train.train_helpers import step_inputs, tiny_config

UNUSED = Path("/nonexistent")


def tiny_recipe(**kw) -> DINORecipe:
    return DINORecipe.from_config(tiny_config(UNUSED, UNUSED, **kw))


def views(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in (32, 32, 16, 16)]


def test_models_are_a_student_and_its_gradient_free_copy():
    torch.manual_seed(0)
    recipe = tiny_recipe()
    student, teacher = recipe.build_models()
    assert student.state_dict().keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student.backbone.blocks[-1].drop_path.p > 0 == teacher.backbone.blocks[-1].drop_path.p
    assert student.head.last_layer.weight_v.shape[0] == 64
    wide, _ = recipe.build_models(img_size=64)
    assert wide.backbone.pos_embed.shape[1] == (64 // 16) ** 2 + 1


def test_the_one_term_is_the_dino_loss_of_teacher_globals_and_student_views():
    torch.manual_seed(0)
    recipe = tiny_recipe()
    student, teacher = recipe.build_models()
    student.eval()  # no drop path: the by-hand forward below sees the same network
    twin = DINOLoss(64, 4, impl="fused")
    batch, at = step_inputs(views(), epoch=0, iteration=0, lr=0.0, wd=0.0, momentum=0.9,
                            teacher_temp=0.05)
    terms = recipe.losses(batch, student, teacher, at)
    assert list(terms) == ["dino"]
    with torch.no_grad():
        want = twin(student(batch.views), teacher(batch.views[:2]), 0.05)
    torch.testing.assert_close(terms["dino"].detach(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(recipe.loss.center, twin.center)  # the center moved alike


def test_checkpoint_entry_round_trips_and_its_absence_is_one_clear_error():
    recipe = tiny_recipe()
    with torch.no_grad():
        recipe.loss.center.normal_()
    entries = recipe.state_dict()
    assert list(entries) == ["dino_loss"] and entries["dino_loss"]["center"].shape == (1, 64)
    other = tiny_recipe()
    other.load_state_dict(entries, "c.pth")
    assert torch.equal(other.loss.center, recipe.loss.center)
    with pytest.raises(CheckpointError, match="c.pth is not a dino-train checkpoint.*dino_loss"):
        other.load_state_dict({"student": {}}, "c.pth")


def test_a_step_of_two_micro_batches_centers_and_updates_like_one_batch():
    """Targets use this step's center for every micro-batch; the center then moves once,
    by the mean over both micro-batches' teacher rows, as one batch of their union would."""
    torch.manual_seed(0)
    whole_recipe, split_recipe = tiny_recipe(), tiny_recipe()
    student, teacher = whole_recipe.build_models()
    student.eval()
    with torch.no_grad():
        whole_recipe.loss.center.normal_()
        split_recipe.loss.center.copy_(whole_recipe.loss.center)
    batch, at = step_inputs(views(batch=4), epoch=0, iteration=0, lr=0.0, wd=0.0, momentum=0.9,
                            teacher_temp=0.05)
    halves = [step_inputs([v[i:i + 2] for v in batch.views], epoch=0, iteration=0, lr=0.0,
                          wd=0.0, momentum=0.9, teacher_temp=0.05)[0] for i in (0, 2)]
    whole = whole_recipe.losses(batch, student, teacher, at)["dino"]
    before = split_recipe.loss.center.clone()
    with torch.no_grad():
        targets = split_recipe.teacher_targets(halves, teacher, at)
    parts = [split_recipe.student_losses(h, student, t, at)["dino"] for h, t in
             zip(halves, targets)]
    assert torch.equal(split_recipe.loss.center, before)  # untouched until the step ends
    split_recipe.end_step(targets)
    torch.testing.assert_close(split_recipe.loss.center, whole_recipe.loss.center)
    # each micro-batch's term is its own batch mean, so the mean of equal halves is the whole
    torch.testing.assert_close((parts[0] + parts[1]).detach() / 2, whole.detach(), rtol=1e-5,
                               atol=0)
