"""dino-export --format official|timm|hf, --student, .safetensors outputs, and bad input as
one line with exit status 2."""
import json

import pytest
import torch

pytest.importorskip("safetensors", reason="safetensors is not installed (the interop extra)")

from dino_core.cli import export  # noqa: E402
from dino_core.formats import load_backbone  # noqa: E402
from dino_core.formats.safetensors_io import read_safetensors  # noqa: E402
from dino_core.models import DINOHead, MultiCropWrapper, build_vit  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A project checkpoint whose student and teacher backbones differ."""
    root = tmp_path_factory.mktemp("export")
    nets = {}
    for seed, name in ((0, "teacher"), (1, "student")):
        torch.manual_seed(seed)
        nets[name] = MultiCropWrapper(build_vit("vit_tiny", 16, img_size=32),
                                      DINOHead(192, 16, hidden_dim=16, bottleneck_dim=8))
    torch.save({"student": {"module." + k: v for k, v in nets["student"].state_dict().items()},
                "teacher": nets["teacher"].state_dict(), "epoch": 1,
                "config": {"model": {"arch": "vit_tiny", "patch_size": 16, "out_dim": 16}}},
               root / "checkpoint.pth")
    return root / "checkpoint.pth", {k: n.backbone.state_dict() for k, n in nets.items()}


def run(checkpoint, output, *extra):
    return export.main(["--checkpoint", str(checkpoint), "--output", str(output), *extra])


@pytest.mark.parametrize("fmt,name", [("official", "b.safetensors"), ("timm", "b.pth"),
                                      ("hf", "hf")])
def test_every_format_is_read_back_by_the_readers(checkpoint, tmp_path, capsys, fmt, name):
    path, backbones = checkpoint
    assert run(path, tmp_path / name, "--format", fmt, "--student") == 0
    assert f"vit_tiny/16 student backbone" in capsys.readouterr().out
    model, ck = load_backbone(tmp_path / name)
    assert ck.layout == ("hf" if fmt == "hf" else "dino")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbones["student"].items())


def test_hf_directory_holds_config_and_hub_names(checkpoint, tmp_path, capsys):
    path, backbones = checkpoint
    assert run(path, tmp_path / "hf", "--format", "hf") == 0  # the teacher by default
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["image_size"]) == (
        192, 3, 32)
    weights = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert torch.equal(weights["embeddings.cls_token"], backbones["teacher"]["cls_token"])
    assert "encoder.layer.11.attention.attention.value.bias" in weights
    capsys.readouterr()


def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    (tmp_path / "file").write_text("x")
    assert run(path, tmp_path / "file", "--format", "hf") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "writes a directory" in err
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" + bytes(7) + b"{not json at all")
    assert run(tmp_path / "junk.safetensors", tmp_path / "o.pth") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.safetensors is corrupt or truncated" in err
