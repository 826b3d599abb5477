"""model.compile: the backbones run through torch.compile, with the same names and results."""
import copy
import shutil

import pytest
import torch

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer
from dino_core.recipes import build_recipe
from dino_core.recipes.dino import DINORecipe, compile_backbones
from dino_core.train.optim import build_optimizer
from dino_core.train.step import TrainStep
from tests.dino_core.train.train_helpers import step_inputs, tiny_config

NO_COMPILER = shutil.which("g++") is None and shutil.which("c++") is None


def test_config_switches_compilation_on_and_keeps_names(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path)
    assert cfg.model.compile is False
    student, _ = build_recipe(cfg).build_models()
    assert getattr(student.backbone, "_compiled_call_impl", None) is None
    on = tiny_config(tmp_path, tmp_path, extra=["model.compile=true"])
    student_c, teacher_c = build_recipe(on).build_models()
    for w in (student_c, teacher_c):
        assert w.backbone._compiled_call_impl is not None      # compiled lazily, in place
    assert list(student_c.state_dict()) == list(student.state_dict())  # no _orig_mod. prefix


@pytest.mark.skipif(NO_COMPILER, reason="torch.compile on the CPU needs a C++ compiler "
                    "(inductor); none on PATH")
def test_compiled_step_equals_eager_step():
    """One DINO step, global and local crop sizes, eager vs compiled backbones."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    eager = MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=32, bottleneck_dim=16))
    compiled = copy.deepcopy(eager)
    views = [torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s))
             for s in (32, 32, 16, 16)]
    cpu = torch.device("cpu")
    losses, grads = [], []
    for student, comp in ((eager, False), (compiled, True)):
        teacher = copy.deepcopy(student).requires_grad_(False)
        if comp:
            compile_backbones(student, teacher)
        step = TrainStep(DINORecipe(DINOLoss(64, 4, impl="fused")), student, teacher,
                         build_optimizer(student, "adamw", cpu), cpu)
        step.optimizer.step = lambda: None  # keep the weights: compare the gradients
        losses.append(step(*step_inputs(views, epoch=1, iteration=0, lr=1e-4, wd=0.04,
                                        momentum=0.99)))
        grads.append([p.grad.clone() for p in student.parameters() if p.grad is not None])
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
