"""FSDP2 (``--parallel fsdp``) on 2 gloo ranks against DDP on 2 ranks and one process, float64.

One spawn of 2 ranks runs every distributed variant of the same 3 steps (across the
last-layer freeze boundary, every gradient clipped) on the same global batch of 4: DDP;
FSDP; FSDP and DDP with 2 micro-batches per step; FSDP with activation checkpointing. The
tests compare what each left behind with one process on the whole batch: student, teacher,
center and the loss of every step within 1e-10; the bytes of parameters and optimizer state
each rank holds (about half under FSDP); a sharded checkpoint written by the 2 ranks,
loaded by one process, and one written by FSDP in one process (before the spawn), loaded
by the 2 ranks.

All 4 views have one size: the ViT resizes its position embeddings for another size in
float32 (bicubic, as upstream DINO does), which would put float32 rounding into the
gradients. Two more variants run 32 px globals and 16 px locals (the backbone called twice
per forward, once per size: FSDP gathers each block twice) and are compared at 1e-8.
"""
import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_core.loss import DINOLoss
from dino_core.models import DINOHead, MultiCropWrapper, VisionTransformer
from dino_core.models.checkpointing import checkpoint_blocks
from dino_core.parallel.ddp import DDPStrategy
from dino_core.parallel.env import DistEnv, init_alone, shutdown
from dino_core.parallel.fsdp import FSDPStrategy
from dino_core.recipes.dino import DINORecipe
from dino_core.train.optim import build_optimizer
from dino_core.train.step import TrainStep
from tests.dino_core.parallel.test_ddp_step import free_port
from tests.dino_core.train.train_helpers import step_inputs

BATCH = 4             # the global batch; each of the 2 ranks takes half
EPOCHS = (0, 0, 1)    # freeze_last_layer=1: frozen for two steps, then trained
CPU = torch.device("cpu")
SIZES = (32, 32, 32, 32)  # 2 global and 2 local views
MULTI_RES = (32, 32, 16, 16)
CLIP = 0.01           # below every gradient's norm: clipping over shards is compared too
# name: (strategy, micro-batches, activation checkpointing, view sizes)
VARIANTS = {"ddp": ("ddp", 1, False, SIZES), "fsdp": ("fsdp", 1, False, SIZES),
            "ddp_accum": ("ddp", 2, False, SIZES), "fsdp_accum": ("fsdp", 2, False, SIZES),
            "fsdp_ckpt": ("fsdp", 1, True, SIZES),
            "fsdp_multires": ("fsdp", 1, False, MULTI_RES),
            "fsdp_accum_multires": ("fsdp", 2, True, MULTI_RES)}


def make_models():
    """A ViT of 2 blocks, D=32, K=64, float64; the teacher a copy."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    student = MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)).double()
    return student, copy.deepcopy(student).requires_grad_(False)


def views(step: int, part: slice, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """2 global and 2 local views of the global batch, rows ``part``."""
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(BATCH, 3, s, s, generator=gen, dtype=torch.float64)[part]
            for s in sizes]


def train(strategy, part: slice, grad_accum: int = 1, checkpointing: bool = False,
          sizes: tuple[int, ...] = SIZES):
    """3 steps of DINO on rows ``part`` of each step's batch; (step, losses)."""
    student, teacher = make_models()
    if checkpointing:
        checkpoint_blocks(student)
    student, teacher = strategy.wrap(student, teacher, CPU)
    bare = strategy.unwrap(student)
    step = TrainStep(DINORecipe(DINOLoss(64, 4, impl="fused")), student, teacher,
                     build_optimizer(bare, "adamw", CPU), CPU, clip_grad=CLIP,
                     freeze_last_layer=1, strategy=strategy, grad_accum=grad_accum)
    losses = [step(*step_inputs(views(i, part, sizes), epoch, i, lr=1e-4, wd=0.04, momentum=0.99))
              for i, epoch in enumerate(EPOCHS)]
    return step, torch.stack(losses)


def full_state(strategy, model) -> dict:
    """The whole state dict (gathered from the shards under FSDP: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if isinstance(strategy, FSDPStrategy):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.clone() for k, v in strategy.unwrap(model).state_dict().items()}


def sharded_state(step: TrainStep) -> dict:
    """What the strategy puts in a checkpoint, with the center and the RNG states."""
    from dino_core.train.rng import rng_state
    s = step.strategy
    return {"student": s.model_state(step.student), "teacher": s.model_state(step.teacher),
            "optimizer": s.optimizer_state(step.optimizer, step.student), "epoch": 1,
            **step.recipe.state_dict(), "rng": rng_state(CPU)}


def trained(step: TrainStep) -> dict:
    """Whole student, teacher, first moments (gathered; every rank calls it) and center."""
    s = step.strategy
    step.recipe.loss.sync_center()
    state = step.optimizer.state
    moments = {name: state[p]["exp_avg"] for name, p in step.bare_student.named_parameters()
               if p in state}
    if isinstance(s, FSDPStrategy):
        moments = {name: m.full_tensor() for name, m in moments.items()}
    return {"student": full_state(s, step.student), "teacher": full_state(s, step.teacher),
            "center": step.recipe.loss.center.clone(), "moments": moments}


def load_sharded(strategy: FSDPStrategy, folder) -> dict:
    """Fresh FSDP models and optimizer loaded from the sharded checkpoint in ``folder``
    (every rank calls it), as ``trained`` reports them."""
    student, teacher = strategy.wrap(*make_models(), CPU)
    step = TrainStep(DINORecipe(DINOLoss(64, 4)), student, teacher,
                     build_optimizer(student, "adamw", CPU), CPU, strategy=strategy)
    ckpt, path = strategy.checkpoint_store(folder).load_latest(CPU)
    strategy.load_model_state(student, ckpt["student"], "student", path)
    strategy.load_model_state(teacher, ckpt["teacher"], "teacher", path)
    strategy.load_optimizer_state(step.optimizer, student, ckpt["optimizer"])
    step.recipe.load_state_dict(ckpt, path)
    return trained(step)


def worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        env = DistEnv(rank, 2)
        results = {}
        for name, (kind, accum, ckpt, sizes) in VARIANTS.items():
            strategy = FSDPStrategy(env) if kind == "fsdp" else DDPStrategy(
                env, static_graph=accum == 1)
            step, losses = train(strategy, slice(2 * rank, 2 * rank + 2), accum, ckpt, sizes)
            results[name] = {**trained(step), "losses": losses, "bytes": step.held_bytes()}
            if name == "fsdp":  # a sharded checkpoint of both ranks: the 2 -> 1 test
                strategy.checkpoint_store(Path(out) / "two").save(lambda: sharded_state(step))
        # 1 -> 2: the checkpoint one process wrote before this spawn
        results["from_one"] = load_sharded(FSDPStrategy(env), Path(out) / "one")
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """(folder, [rank 0's results, rank 1's], FSDP in one process: its results)."""
    out = tmp_path_factory.mktemp("fsdp")
    init_alone("cpu")  # FSDP in this process: a one-rank group
    try:
        step, losses = train(FSDPStrategy(), slice(0, BATCH))
        alone = {**trained(step), "losses": losses}
        step.strategy.checkpoint_store(out / "one").save(lambda: sharded_state(step))
    finally:
        shutdown()
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)], alone


@pytest.fixture(scope="module")
def one_process():
    """One process on the whole batch, for each view-size set: (step, losses)."""
    return {sizes: train(DDPStrategy(), slice(0, BATCH), sizes=sizes)
            for sizes in (SIZES, MULTI_RES)}


def assert_close(got: dict, step: TrainStep, tol: float, what: str) -> None:
    for name, model in (("student", step.student), ("teacher", step.teacher)):
        for k, v in model.state_dict().items():
            diff = (got[name][k] - v).abs().max().item()
            assert diff < tol, f"{what}: {name}.{k} differs by {diff:.2e}"
    assert (got["center"] - step.recipe.loss.center).abs().max() < tol, what


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks, one_process, variant):
    _, results, _ = ranks
    sizes = VARIANTS[variant][3]
    step, losses = one_process[sizes]
    tol = 1e-10 if sizes == SIZES else 1e-8
    # the last layer moved once the freeze ended: the comparison covers a trained head
    first = make_models()[0].head.last_layer.weight_v
    assert (step.student.head.last_layer.weight_v - first).abs().max() > 1e-5
    for r in results:
        assert_close(r[variant], step, tol, variant)
    # each rank's loss is the mean over its half: their mean is the whole batch's
    mean = (results[0][variant]["losses"] + results[1][variant]["losses"]) / 2
    assert (mean - losses).abs().max() < tol, (variant, mean, losses)


def test_fsdp_in_one_process_equals_ddp_in_one_process(ranks, one_process):
    _, _, alone = ranks
    step, losses = one_process[SIZES]
    assert_close(alone, step, 1e-10, "fsdp alone")
    assert (alone["losses"] - losses).abs().max() < 1e-10


def test_fsdp_ranks_hold_about_half_the_parameter_and_optimizer_bytes_of_ddp(ranks):
    _, results, _ = ranks
    ddp = results[0]["ddp"]["bytes"]
    assert results[1]["ddp"]["bytes"] == ddp
    student, _ = make_models()
    whole = sum(p.numel() * p.element_size() for p in student.parameters())
    assert ddp > 2 * whole  # parameters + AdamW's two moments of the trainable ones
    for r in results:
        assert 0.45 < r["fsdp"]["bytes"] / ddp < 0.55, (r["fsdp"]["bytes"], ddp)
    assert sum(r["fsdp"]["bytes"] for r in results) == ddp  # shards partition the whole


def assert_equal(got: dict, want: dict) -> None:
    for name in ("student", "teacher"):
        assert got[name].keys() == want[name].keys()
        for k, v in want[name].items():
            assert torch.equal(got[name][k], v), f"{name}.{k}"
    assert torch.equal(got["center"], want["center"])
    assert got["moments"].keys() == want["moments"].keys() and got["moments"]
    for k, v in want["moments"].items():
        assert torch.equal(got["moments"][k], v), f"exp_avg of {k}"


def test_a_checkpoint_of_two_ranks_loads_into_one_process(ranks):
    out, results, _ = ranks
    init_alone("cpu")
    try:
        got = load_sharded(FSDPStrategy(), out / "two")
    finally:
        shutdown()
    assert_equal(got, results[0]["fsdp"])
    assert all(m.abs().max() > 0 for m in got["moments"].values())


def test_a_checkpoint_of_one_process_loads_into_two_ranks(ranks):
    _, results, alone = ranks
    for r in results:
        assert_equal(r["from_one"], alone)


def test_a_checkpoint_inside_the_last_layer_freeze_loads_without_its_optimizer_state(tmp_path):
    """After a step of epoch 0 the frozen last layer has no AdamW state: the loaded optimizer
    has none either (a made-up one would shift its step count), the rest is equal."""
    init_alone("cpu")
    try:
        strategy = FSDPStrategy()
        student, teacher = strategy.wrap(*make_models(), CPU)
        step = TrainStep(DINORecipe(DINOLoss(64, 4, impl="fused")), student, teacher,
                         build_optimizer(student, "adamw", CPU), CPU, freeze_last_layer=1,
                         strategy=strategy)
        step(*step_inputs(views(0, slice(0, BATCH), SIZES), 0, 0, lr=1e-4, wd=0.04,
                          momentum=0.99))
        strategy.checkpoint_store(tmp_path).save(lambda: sharded_state(step))
        want = trained(step)
        got = load_sharded(strategy, tmp_path)
    finally:
        shutdown()
    assert "head.last_layer.weight_v" not in want["moments"]
    assert_equal(got, want)


def test_per_part_clipping_over_shards_equals_the_plain_one_in_one_process():
    """DINOv2's per-part clipping: FSDP's (shards, one all-reduce) on whole tensors (one
    rank, no group) against ``clip_per_part``. Not run on 2 ranks here: its all-reduce of
    squared norms is clip_grads' one, which the 2-rank tests cover."""
    from dino_core.train.optim import clip_per_part
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in (7, 3, 5, 2)]
    scales = (10.0, 0.01, 1.0, 3.0)

    def parts():
        ps = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for p, g, k in zip(ps, grads, scales):
            p.grad = g * k
        return [ps[:2], ps[2:], []], ps
    want_parts, want = parts()
    clip_per_part(want_parts, 1.0)
    got_parts, got = parts()
    FSDPStrategy().clip_grads_per_part(got_parts, 1.0)
    for a, b in zip(got, want):
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=0)
    assert not torch.allclose(got[0].grad, grads[0] * scales[0])  # the first part was clipped
