"""The step: with the DINO recipe, one backbone pass per crop size and one head pass per
model; with any recipe, the sum of its terms back-propagated and each term reported."""
import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer, WeightNormLinear
from dino_core.recipes.base import Recipe
from dino_core.recipes.dino import DINORecipe
from dino_core.train.optim import build_optimizer
from dino_core.train.step import TrainStep
from tests.dino_core.train.train_helpers import step_inputs


def test_weight_normalised_last_layer_is_built_once_per_model_per_step(monkeypatch):
    """The 256 x K normalised matrix (67 MB fp32 at K = 65536) is rebuilt from weight_v at
    every head call; the multi-crop wrapper calls the head once on all crops' features, so
    a step builds it once for the student (all views) and once for the teacher (globals),
    although the student's backbone runs twice (global and local sizes)."""
    built = []
    weight = WeightNormLinear.weight.fget
    monkeypatch.setattr(WeightNormLinear, "weight", property(lambda m: built.append(m) or weight(m)))
    torch.manual_seed(0)

    def make():
        vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
        return MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=32, bottleneck_dim=16))

    student, teacher = make(), make().requires_grad_(False)
    backbone_calls = {"student": 0, "teacher": 0}
    for name, model in (("student", student), ("teacher", teacher)):
        model.backbone.register_forward_hook(
            lambda *_, name=name: backbone_calls.__setitem__(name, backbone_calls[name] + 1))
    cpu = torch.device("cpu")
    step = TrainStep(DINORecipe(DINOLoss(64, 4, impl="fused")), student, teacher,
                     build_optimizer(student, "adamw", cpu), cpu)
    views = [torch.randn(2, 3, s, s) for s in (32, 32, 16, 16)]
    step(*step_inputs(views, epoch=1, iteration=0, lr=1e-4, wd=0.04, momentum=0.99))
    assert backbone_calls == {"student": 2, "teacher": 1}
    assert [m is student.head.last_layer for m in built].count(True) == 1
    assert [m is teacher.head.last_layer for m in built].count(True) == 1
    assert len(built) == 2


class TwoTerms(Recipe):
    """A recipe with two loss terms on a linear student, to see the step's sum and stats."""

    name = "two-terms"

    @classmethod
    def from_config(cls, cfg):
        return cls()

    @property
    def teacher_temp_settings(self):
        raise NotImplementedError

    def build_models(self, init_backbone=True, img_size=None):
        student = torch.nn.Linear(3 * 4 * 4, 5)
        teacher = torch.nn.Linear(3 * 4 * 4, 5).requires_grad_(False)
        teacher.load_state_dict(student.state_dict())
        return student, teacher

    def teacher_targets(self, micro_batches, teacher, at):
        return [None for _ in micro_batches]

    def student_losses(self, batch, student, target, at):
        out = student(batch.views[0].flatten(1))
        return {"square": out.pow(2).mean(), "shift": 0.5 * out.mean()}


def test_the_step_backpropagates_the_sum_of_the_terms_and_reports_each():
    torch.manual_seed(0)
    recipe = TwoTerms()
    student, teacher = recipe.build_models()
    cpu = torch.device("cpu")
    step = TrainStep(recipe, student, teacher, build_optimizer(student, "adamw", cpu), cpu,
                     clip_grad=0.0)
    step.optimizer.step = lambda: None  # keep the weights: compare the gradients
    views = [torch.randn(3, 3, 4, 4)]
    loss = step(*step_inputs(views, epoch=1, iteration=0, lr=1e-3, wd=0.0, momentum=0.9))
    twin = torch.nn.Linear(3 * 4 * 4, 5)
    twin.load_state_dict(student.state_dict())
    out = twin(views[0].flatten(1))
    square, shift = out.pow(2).mean(), 0.5 * out.mean()
    (square + shift).backward()
    torch.testing.assert_close(loss, (square + shift).detach())
    for p, q in zip(student.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    step(*step_inputs(views, epoch=1, iteration=1, lr=1e-3, wd=0.0, momentum=0.9))
    stats = step.stats.read()  # two equal steps: the means are the terms themselves
    assert set(stats.means) == {"loss", "loss_square", "loss_shift"}
    assert stats.means["loss_square"] == pytest.approx(square.item(), rel=1e-6)
    assert stats.means["loss_shift"] == pytest.approx(shift.item(), rel=1e-6)
    assert stats.means["loss"] == pytest.approx((square + shift).item(), rel=1e-6)
    assert stats.first_bad == -1 and stats.last_loss == pytest.approx(loss.item(), rel=1e-6)
