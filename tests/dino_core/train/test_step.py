"""The DINO step's structure: one backbone pass per crop size, one head pass per model."""
import torch

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer, WeightNormLinear
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
