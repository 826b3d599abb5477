"""--init-backbone: a run starts from a backbone file (official layout or dino-export's)."""
import pytest
import torch

from dino_core.formats.files import CheckpointError, save_checkpoint
from dino_core.train.init_backbone import resized_pos_embed
from dino_core.models import build_vit
from dino_core.train.run import build_run
from tests.dino_core.train.train_helpers import tiny_config
from tests.pipelines.images import write_image_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), num_classes=2, per_class=4)


def _official_file(path, arch="vit_tiny", patch=16, img_size=224, seed=7):
    torch.manual_seed(seed)
    model = build_vit(arch, patch, img_size=img_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(state, path)  # bare keys, as dino_deitsmall16_pretrain.pth
    return state


def _build(data, out, path, extra=()):
    run = build_run(tiny_config(data, out, extra=[f"init_backbone={path}", *extra]))
    run.loader.close()
    return run


def test_student_and_teacher_backbones_equal_the_official_file(data, tmp_path):
    state = _official_file(tmp_path / "dino_vittiny16_pretrain.pth")
    run = _build(data, tmp_path / "run", tmp_path / "dino_vittiny16_pretrain.pth")
    for net in (run.bare_student.backbone, run.teacher.backbone):
        got = net.state_dict()
        assert set(got) == set(state)
        for k, v in state.items():
            assert torch.equal(got[k], v), k
    assert run.start_epoch == 0  # a start, not a resume
    fresh = build_run(tiny_config(data, tmp_path / "fresh"))
    fresh.loader.close()
    head_keys = [k for k in fresh.bare_student.state_dict() if k.startswith("head.")]
    for k in head_keys:  # the head is the same fresh head a plain run builds
        assert torch.equal(fresh.bare_student.state_dict()[k], run.bare_student.state_dict()[k])


def test_dino_export_output_is_accepted(data, tmp_path):
    from dino_core.formats import export_backbone
    from dino_core.train.loop import train
    src = tmp_path / "src"
    train(tiny_config(data, src, epochs=1))
    export_backbone(src / "checkpoint.pth", tmp_path / "exported.pth")
    exported = torch.load(tmp_path / "exported.pth", weights_only=True)
    run = _build(data, tmp_path / "run", tmp_path / "exported.pth")
    for k, v in exported.items():
        assert torch.equal(run.teacher.backbone.state_dict()[k], v)
        assert torch.equal(run.bare_student.backbone.state_dict()[k], v)


@pytest.mark.parametrize("arch,patch,says", [("vit_small", 16, "holds a vit_small backbone "
                                              "with patch size 16"),
                                             ("vit_tiny", 8, "holds a vit_tiny backbone with "
                                              "patch size 8")])
def test_another_architecture_or_patch_size_is_one_clear_error(data, tmp_path, arch, patch, says):
    _official_file(tmp_path / "w.pth", arch, patch)
    with pytest.raises(CheckpointError, match=says) as e:
        _build(data, tmp_path / "run", tmp_path / "w.pth")
    assert "\n" not in str(e.value) and "vit_tiny with patch size 16" in str(e.value)


def test_a_resumed_run_ignores_the_backbone_file_even_when_it_is_gone(data, tmp_path):
    """A requeued job resumes from its checkpoint; the file it started from may be gone."""
    from dino_core.train.loop import train
    path = tmp_path / "start.pth"
    _official_file(path)
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, extra=[f"init_backbone={path}"]))
    path.unlink()
    run = build_run(tiny_config(data, out, epochs=2, extra=[f"init_backbone={path}"]))
    run.loader.close()
    train(tiny_config(data, out, epochs=2, extra=[f"init_backbone={path}"]))
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_missing_file_is_one_clear_error(data, tmp_path):
    with pytest.raises(CheckpointError, match="--init-backbone file not found"):
        _build(data, tmp_path / "run", tmp_path / "nope.pth")


def test_position_embedding_of_another_resolution_is_resized_as_the_model_would(data, tmp_path):
    state = _official_file(tmp_path / "w384.pth", img_size=384)  # 24 x 24 grid
    run = _build(data, tmp_path / "run", tmp_path / "w384.pth")
    got = run.teacher.backbone.pos_embed
    assert got.shape == (1, 14 * 14 + 1, 192)
    at_384 = build_vit("vit_tiny", 16, img_size=384)
    at_384.load_state_dict(state)
    expected = at_384.interpolate_pos_encoding(224, 224)  # what that model uses at 224 px
    assert torch.equal(got, expected.detach())
    assert torch.equal(run.bare_student.backbone.pos_embed, got)
    for k in state:
        if k != "pos_embed":
            assert torch.equal(run.teacher.backbone.state_dict()[k], state[k])


def test_resize_is_identity_for_the_same_grid():
    model = build_vit("vit_tiny", 16)
    pe = torch.randn_like(model.pos_embed)
    assert resized_pos_embed(pe, model) is pe


def test_cli_reports_a_mismatched_file_in_one_line(data, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    from tests.dino_core.train.train_helpers import tiny_overrides
    root = Path(__file__).resolve().parents[3]
    _official_file(tmp_path / "s8.pth", "vit_small", 8)
    sets = sum((["--set", o] for o in tiny_overrides(data, tmp_path / "run")), [])
    r = subprocess.run([sys.executable, "-m", "dino_core.cli.train", *sets, "--init-backbone",
                        str(tmp_path / "s8.pth")], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("dino-train:")]
    assert len(errors) == 1 and "holds a vit_small backbone with patch size 8" in errors[0]
    assert "Traceback" not in r.stderr
