"""The DDP strategy in one process: no wrapper, plain state dicts, the foreach clip, the
single-file store. (Two ranks: test_ddp_step.py.)"""
import pytest
import torch

from dino_core.formats.files import CheckpointError
from dino_core.parallel.ddp import DDPStrategy
from dino_core.parallel.strategy import build_strategy
from dino_core.train.optim import build_optimizer, clip_per_tensor_reference
from dino_core.train.store import SingleFileStore
from tests.dino_core.parallel.test_ddp_step import make_models

CPU = torch.device("cpu")


def test_one_process_runs_the_plain_modules_and_saves_their_state(tmp_path):
    strategy = DDPStrategy()
    student, teacher = make_models()
    wrapped, teacher_out = strategy.wrap(student, teacher, CPU)
    assert wrapped is student and teacher_out is teacher and strategy.unwrap(wrapped) is student
    assert strategy.grads_to_none(wrapped)
    state = strategy.model_state(wrapped)
    assert list(state) == list(student.state_dict())
    other, _ = make_models()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    strategy.load_model_state(other, state, "student", "c.pth")
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match="c.pth: teacher does not match"):
        strategy.load_model_state(other, {"x": torch.zeros(1)}, "teacher", "c.pth")
    opt = build_optimizer(student, "adamw", CPU)
    assert strategy.optimizer_state(opt, wrapped) == opt.state_dict()
    store = strategy.checkpoint_store(tmp_path)
    assert isinstance(store, SingleFileStore) and store.writer and store.out == tmp_path


def test_clip_is_the_per_tensor_clip():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    for i, p in enumerate(params):
        p.grad = torch.randn_like(p) * (i + 1)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for t, p in zip(twins, params):
        t.grad = p.grad.clone()
    DDPStrategy().clip_grads(params, 2.0)
    clip_per_tensor_reference(twins, 2.0)
    for p, t in zip(params, twins):
        torch.testing.assert_close(p.grad, t.grad)


def test_build_strategy_knows_ddp_and_fsdp_only():
    ddp = build_strategy("ddp", "cpu")
    assert ddp.env.world_size == 1 and ddp.static_graph
    # torch's reducer refuses no_sync under a static graph: accumulation turns it off
    assert not build_strategy("ddp", "cpu", grad_accum=2).static_graph
    with pytest.raises(ValueError, match="unknown parallel strategy 'zero3'; choose from ddp, fsdp"):
        build_strategy("zero3", "cpu")
