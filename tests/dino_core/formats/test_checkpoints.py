"""Checkpoint interchange: official layouts load strictly, export round-trips bit-exactly."""
import argparse

import pytest
import torch

from dino_core.formats.files import CheckpointError
from dino_core.formats import (build_backbone, build_head, export_backbone,
                               load_backbone, read_checkpoint)
from dino_core.models import DINOHead, MultiCropWrapper, build_vit
from tests.dino_core.models.test_vit import official_backbone_shapes

DIM = 192  # ViT-T
K, HIDDEN, BOTTLENECK = 64, 48, 16


def documented_vit_state(dim=192, depth=12, patch=16, grid=14, seed=0):
    """A ViT-T backbone state dict with dino_recipe.md's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g)
            for k, s in official_backbone_shapes(dim, depth, patch, grid).items()}


def documented_head_state(in_dim=DIM, seed=1, parametrized=False):
    g = torch.Generator().manual_seed(seed)
    shapes = {"mlp.0.weight": (HIDDEN, in_dim), "mlp.0.bias": (HIDDEN,),
              "mlp.2.weight": (HIDDEN, HIDDEN), "mlp.2.bias": (HIDDEN,),
              "mlp.4.weight": (BOTTLENECK, HIDDEN), "mlp.4.bias": (BOTTLENECK,)}
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    g_name, v_name = (("last_layer.parametrizations.weight.original0",
                       "last_layer.parametrizations.weight.original1") if parametrized
                      else ("last_layer.weight_g", "last_layer.weight_v"))
    state[g_name] = torch.ones(K, 1)
    state[v_name] = torch.randn(K, BOTTLENECK, generator=g)
    return state


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def official_checkpoint(parametrized=False):
    t_backbone, t_head = documented_vit_state(seed=0), documented_head_state(seed=1)
    s_backbone = documented_vit_state(seed=2)
    s_head = documented_head_state(seed=3, parametrized=parametrized)
    return {
        "student": {**prefixed(s_backbone, "module.backbone."), **prefixed(s_head, "module.head.")},
        "teacher": {**prefixed(t_backbone, "backbone."), **prefixed(t_head, "head.")},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 3, "dino_loss": {"center": torch.randn(1, K)},
        "args": {"arch": "vit_tiny", "patch_size": 16, "out_dim": K, "epochs": 100},
    }, (t_backbone, t_head, s_backbone, s_head)


def assert_same(module, state):
    got = module.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("key", ["teacher", "student"])
def test_official_full_checkpoint_loads_strictly(tmp_path, key):
    ck_dict, (tb, th, sb, sh) = official_checkpoint(parametrized=True)
    torch.save(ck_dict, tmp_path / "checkpoint.pth")
    ck = read_checkpoint(tmp_path / "checkpoint.pth", checkpoint_key=key)
    assert (ck.kind, ck.arch, ck.patch_size) == ("official", "vit_tiny", 16)
    assert torch.equal(ck.center, ck_dict["dino_loss"]["center"])
    backbone, head = build_backbone(ck), build_head(ck)
    want_b, want_h = (tb, th) if key == "teacher" else (sb, sh)
    assert_same(backbone, want_b)
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v"): v
               for k, v in want_h.items()}
    assert_same(head, renamed)


@pytest.mark.parametrize("layout", ["bare", "module.", "backbone.", "module.backbone.", "wrapped"])
def test_backbone_only_files_in_every_key_layout(tmp_path, layout):
    state = documented_vit_state(patch=8, grid=28)
    obj = {"state_dict": state} if layout == "wrapped" else prefixed(
        state, "" if layout == "bare" else layout)
    torch.save(obj, tmp_path / "w.pth")
    backbone, ck = load_backbone(tmp_path / "w.pth")
    assert (ck.kind, ck.name, ck.head) == ("backbone", "vit_tiny/8", None)
    assert_same(backbone, state)
    with pytest.raises(CheckpointError, match="no DINO head"):
        build_head(ck)


def test_pickled_object_gets_the_conversion_error(tmp_path):
    ck_dict, _ = official_checkpoint()
    ck_dict["args"] = argparse.Namespace(arch="vit_tiny", patch_size=16)
    torch.save(ck_dict, tmp_path / "ref.pth")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "ref.pth")
    msg = str(err.value)
    assert "ref.pth" in msg and "weights_only=False" in msg and "vars(args)" in msg


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", 16)
    return MultiCropWrapper(backbone, DINOHead(backbone.embed_dim, K, hidden_dim=HIDDEN,
                                               bottleneck_dim=BOTTLENECK))


def project_checkpoint(teacher, declared="vit_tiny"):
    """This project's layout (CONTRIBUTING.md) around ``teacher``."""
    student_sd = {"module." + k: v for k, v in teacher.state_dict().items()}
    return {"student": student_sd, "teacher": teacher.state_dict(), "optimizer": {},
            "epoch": 1, "iteration": 10, "dino_loss": {"center": torch.zeros(1, K)},
            "config": {"model": {"arch": declared, "patch_size": 16, "out_dim": K}}}


def test_export_then_import_round_trips_bit_exactly(tmp_path, tiny_teacher):
    teacher, ck_dict = tiny_teacher, project_checkpoint(tiny_teacher)
    torch.save(ck_dict, tmp_path / "checkpoint.pth")
    info = export_backbone(tmp_path / "checkpoint.pth", tmp_path / "backbone.pth")
    assert info.kind == "project"
    raw = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert_same(teacher.backbone, raw)   # bare official keys, same bits
    reloaded, ck = load_backbone(tmp_path / "backbone.pth")
    assert ck.kind == "backbone"
    assert_same(reloaded, teacher.backbone.state_dict())
    x = torch.randn(2, 3, 32, 48)
    teacher.backbone.eval()
    assert torch.equal(reloaded(x), teacher.backbone(x))


def test_export_reads_a_sharded_checkpoint_bit_exactly(tmp_path, tiny_teacher):
    """A --parallel fsdp checkpoint (a folder of DCP shards, here written by one process)
    exports the same backbone as the single file."""
    from dino_core.train.sharded_store import LAST, ShardedStore
    state = {**project_checkpoint(tiny_teacher), "rng": {"torch": torch.get_rng_state()}}
    ShardedStore(tmp_path).save(lambda: state)
    info = export_backbone(tmp_path / LAST, tmp_path / "backbone.pth")
    assert (info.kind, info.arch) == ("project", "vit_tiny")
    assert_same(tiny_teacher.backbone, torch.load(tmp_path / "backbone.pth", weights_only=True))


def test_declared_architecture_disagreeing_with_weights_names_both(tmp_path, tiny_teacher):
    torch.save(project_checkpoint(tiny_teacher, declared="vit_small"), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"vit_tiny/16.*vit_small/16"):
        read_checkpoint(tmp_path / "c.pth")


def test_caller_asking_for_another_architecture_names_both(tmp_path, tiny_teacher):
    torch.save(project_checkpoint(tiny_teacher), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"c\.pth.*vit_tiny/16.*vit_small/16"):
        load_backbone(tmp_path / "c.pth", arch="vit_small")
    with pytest.raises(CheckpointError, match=r"vit_tiny/16.*vit_tiny/8"):
        load_backbone(tmp_path / "c.pth", patch_size=8)


def test_unreadable_and_foreign_files_name_the_file(tmp_path):
    for junk in (b"not a checkpoint at all", b"junk"):
        (tmp_path / "junk.pth").write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"junk\.pth is corrupt"):
            read_checkpoint(tmp_path / "junk.pth")
    torch.save({"linear.weight": torch.zeros(3, 4)}, tmp_path / "lin.pth")
    with pytest.raises(CheckpointError, match=r"lin\.pth holds no ViT backbone"):
        read_checkpoint(tmp_path / "lin.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_truncated_backbone_fails_strict_loading_with_a_clear_error(tmp_path):
    state = documented_vit_state()
    del state["blocks.3.mlp.fc2.bias"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w\.pth.*blocks\.3\.mlp\.fc2\.bias"):
        load_backbone(tmp_path / "w.pth")


def test_half_precision_weights_load_as_float32(tmp_path):
    state = documented_vit_state()
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "h.pth")
    backbone, _ = load_backbone(tmp_path / "h.pth")
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    assert torch.equal(backbone.pos_embed, state["pos_embed"].half().float())
