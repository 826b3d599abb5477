"""Gradient accumulation (``--grad-accum N``): N micro-batches of B equal one batch of N * B,
in float64, for DINO (its center from the whole batch) and for a stand-in recipe whose
targets are normalised over the whole step (Sinkhorn-Knopp, as DINOv2's)."""
import copy

import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer
from dino_core.recipes.dino import DINORecipe
from dino_core.train.accumulation import split_batch
from dino_core.train.optim import build_optimizer
from dino_core.train.step import TrainStep
from tests.dino_core.train.test_step import TwoTerms
from tests.dino_core.train.train_helpers import step_inputs

CPU = torch.device("cpu")
BATCH = 8


def test_micro_batches_are_consecutive_rows_of_every_per_sample_field():
    views = [torch.arange(6.0).reshape(6, 1, 1, 1) * k for k in (1, 10, 100)]
    batch, _ = step_inputs(views, 0, 0, lr=0.0, wd=0.0, momentum=0.0)
    batch.masks = torch.arange(12).reshape(12, 1, 1) >= 0  # 2 globals, view-major
    batch.masks[7] = False                                 # global view 1 of sample 1
    first, second, third = split_batch(batch, 3)
    assert [v.flatten().tolist() for v in second.views] == [[2, 3], [20, 30], [200, 300]]
    assert second.sample_ids.tolist() == [2, 3] and second.labels.shape == (2,)
    # masks [G * B]: each micro-batch keeps its samples' rows of both global views
    assert second.masks.shape == (4, 1, 1) and first.masks.flatten().tolist() == [
        True, True, True, False]
    assert split_batch(batch, 1)[0] is batch
    with pytest.raises(ValueError, match="6 samples cannot be cut into 4"):
        split_batch(batch, 4)


# ----------------------------------------------------------------------------- DINO
def dino_models():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    student = MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)).double()
    return student, copy.deepcopy(student).requires_grad_(False)


def dino_views(step: int) -> list[torch.Tensor]:
    """2 global and 2 local views of one size (no float32 position-embedding resize)."""
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(BATCH, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(4)]


def dino_steps(grad_accum: int, steps: int = 2) -> tuple[TrainStep, list[float]]:
    student, teacher = dino_models()
    loss = DINOLoss(64, 4, impl="fused").double()  # a float64 center
    step = TrainStep(DINORecipe(loss), student, teacher,
                     build_optimizer(student, "adamw", CPU), CPU, clip_grad=0.01,
                     freeze_last_layer=0, grad_accum=grad_accum)
    losses = [step(*step_inputs(dino_views(i), 0, i, lr=1e-3, wd=0.04, momentum=0.9)).item()
              for i in range(steps)]
    return step, losses


@pytest.mark.parametrize("n", [2, 4])
def test_n_dino_micro_batches_equal_one_batch_of_their_union(n):
    whole, whole_losses = dino_steps(1)
    split, split_losses = dino_steps(n)
    assert split_losses == pytest.approx(whole_losses, abs=1e-12)
    for a, b in ((split.student, whole.student), (split.teacher, whole.teacher)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert (x - y).abs().max() < 1e-10, k
    assert (split.recipe.loss.center - whole.recipe.loss.center).abs().max() < 1e-12
    assert whole.recipe.loss.center.abs().max() > 1e-3  # the center moved


def test_the_center_moves_by_the_mean_over_every_micro_batch_not_the_last_one():
    step, _ = dino_steps(4, steps=1)
    _, teacher = dino_models()
    with torch.no_grad():
        rows = teacher(dino_views(0)[:2])                       # [2 * BATCH, K]
        last = teacher([v[-BATCH // 4:] for v in dino_views(0)[:2]])
    m = step.recipe.loss._center_ema.momentum
    want = (1 - m) * rows.mean(0, keepdim=True)                 # from a zero center
    only_last = (1 - m) * last.mean(0, keepdim=True)
    assert (want - only_last).abs().max() > 1e-3  # the two readings differ: this can fail
    assert (step.recipe.loss.center - want).abs().max() < 1e-12


# ----------------------------------------------------------------------------- any recipe
def sinkhorn_knopp(scores: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Rows [R, K] -> a doubly-normalised assignment [R, K] (each row sums to 1, each
    prototype's column to R / K): depends on every row, as DINOv2's centering does."""
    q = torch.exp(scores - scores.max()).T  # [K, R]
    q /= q.sum()
    k, r = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * r
    return (q * r).T


class WholeStepTargets(TwoTerms):
    """A stand-in recipe on linear models whose targets are Sinkhorn-Knopp over every row
    of the step; ``per_micro_batch`` normalises each micro-batch alone instead (what
    accumulation must not do: the test shows the difference)."""

    name = "whole-step"

    def __init__(self, per_micro_batch: bool = False):
        self.per_micro_batch = per_micro_batch

    def build_models(self, init_backbone=True, img_size=None):
        torch.manual_seed(0)
        student = torch.nn.Linear(3 * 4 * 4, 6).double()
        return student, copy.deepcopy(student).requires_grad_(False)

    def teacher_targets(self, micro_batches, teacher, at):
        scores = [teacher(b.views[0].flatten(1)) / at.teacher_temp for b in micro_batches]
        if self.per_micro_batch:
            return [sinkhorn_knopp(s) for s in scores]
        return list(sinkhorn_knopp(torch.cat(scores)).split([len(s) for s in scores]))

    def student_losses(self, batch, student, target, at):
        logp = student(batch.views[1].flatten(1)).log_softmax(-1)
        return {"swap": -(target * logp).sum(-1).mean()}


def whole_step_run(grad_accum: int, per_micro_batch: bool = False) -> torch.nn.Module:
    recipe = WholeStepTargets(per_micro_batch)
    student, teacher = recipe.build_models()
    step = TrainStep(recipe, student, teacher, build_optimizer(student, "adamw", CPU), CPU,
                     clip_grad=0.0, freeze_last_layer=0, grad_accum=grad_accum)
    for i in range(2):
        gen = torch.Generator().manual_seed(i)
        views = [torch.randn(BATCH, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in "ab"]
        step(*step_inputs(views, 0, i, lr=1e-2, wd=0.0, momentum=0.5, teacher_temp=0.1))
    return student


def test_a_recipe_normalising_over_the_whole_step_accumulates_exactly():
    whole = whole_step_run(1)
    split = whole_step_run(4)
    for x, y in zip(split.parameters(), whole.parameters()):
        assert (x - y).abs().max() < 1e-12
    # normalising each micro-batch alone gives another result: the targets of the whole
    # step are what makes accumulation exact
    alone = whole_step_run(4, per_micro_batch=True)
    assert max((x - y).abs().max() for x, y in zip(alone.parameters(), whole.parameters())) > 1e-4
