"""DDP as the trainer wraps it (gradient_as_bucket_view, static_graph) on gloo, 2 processes:
across the last-layer freeze boundary it trains exactly as one process on the whole batch."""
import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer
from dino_core.parallel.ddp import DDPStrategy
from dino_core.parallel.env import DistEnv
from dino_core.recipes.dino import DINORecipe
from dino_core.train.optim import build_optimizer
from dino_core.train.step import TrainStep
from tests.dino_core.train.train_helpers import step_inputs

BATCH = 4                 # whole batch; each of the 2 ranks takes half
EPOCHS = (0, 0, 1, 1, 1)  # freeze_last_layer=1: frozen for two steps, then trained
CPU = torch.device("cpu")


def make_models():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    student = MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=32, bottleneck_dim=16))
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student, teacher


def batch(step: int, part: slice) -> list[torch.Tensor]:
    """2 global (32 px) and 2 local (16 px) views of the whole batch, rows ``part``."""
    gen = torch.Generator().manual_seed(step)
    sizes = (32, 32, 16, 16)
    return [torch.randn(BATCH, 3, s, s, generator=gen)[part] for s in sizes]


def train(student, teacher, part: slice, strategy: DDPStrategy) -> TrainStep:
    bare = strategy.unwrap(student)
    loss = DINOLoss(64, 4, impl="fused")
    step = TrainStep(DINORecipe(loss), student, teacher, build_optimizer(bare, "adamw", CPU),
                     CPU, freeze_last_layer=1, strategy=strategy)
    for i, epoch in enumerate(EPOCHS):
        step(*step_inputs(batch(i, part), epoch, i, lr=1e-4, wd=0.04, momentum=0.99))
    return step


def worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        student, teacher = make_models()
        strategy = DDPStrategy(DistEnv(rank, 2))
        ddp, teacher = strategy.wrap(student, teacher, CPU)
        step = train(ddp, teacher, slice(2 * rank, 2 * rank + 2), strategy)
        assert ddp.static_graph and ddp.gradient_as_bucket_view and not step.grads_to_none
        step.recipe.loss.sync_center()
        views = [p.grad._is_view() for p in student.parameters() if p.grad is not None]
        torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                    "center": step.recipe.loss.center, "grad_views": views},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_static_graph_bucket_views_match_one_process_across_the_freeze(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    student, teacher = make_models()
    initial_last = student.head.last_layer.weight_v.detach().clone()
    step = train(student, teacher, slice(0, BATCH), DDPStrategy())
    assert step.grads_to_none
    # The last layer moved once the freeze ended, by far more than the tolerance below
    # (Adam turns rounding noise in near-zero gradients into steps of up to lr = 1e-4).
    assert (student.head.last_layer.weight_v - initial_last).abs().max() > 1e-4
    for got in ranks:
        assert got["grad_views"] and all(got["grad_views"])  # grads live in DDP's buckets
        for name, want in (("student", student.state_dict()), ("teacher", teacher.state_dict())):
            for k, v in want.items():
                assert torch.equal(got[name][k], ranks[0][name][k]), f"{name}.{k}: ranks differ"
                assert torch.allclose(got[name][k], v, atol=2e-5, rtol=1e-4), \
                    f"{name}.{k}: 2 ranks != 1 process, max diff {(got[name][k] - v).abs().max()}"
        assert torch.allclose(got["center"], step.recipe.loss.center, atol=1e-7)
