"""Every backbone reader (--init-backbone; dino-knn, dino-linear and dino-attn through
``eval_common.load_cli_backbone``) takes every weight file a user may hold: official and timm
``.pth`` and ``.safetensors``, a Hugging Face directory and its ``model.safetensors``, a full
checkpoint of this project or of the reference code. A file in no known layout is one line
naming what it holds; a partial placement is an error."""
import argparse

import pytest
import torch

pytest.importorskip("safetensors", reason="safetensors is not installed (the interop extra)")

from dino_core.cli.eval_common import load_cli_backbone  # noqa: E402
from dino_core.formats import CheckpointError, export_backbone, hf  # noqa: E402
from dino_core.formats.files import save_checkpoint  # noqa: E402
from dino_core.formats.safetensors_io import write_safetensors  # noqa: E402
from dino_core.train.init_backbone import read_init_backbone  # noqa: E402

from .test_hf import canonical_state  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of one teacher backbone in every form, and the backbone itself."""
    root = tmp_path_factory.mktemp("readers")
    state = canonical_state(seed=3)
    other = canonical_state(seed=4)  # the student: a reader must not take it
    save_checkpoint(state, root / "official.pth")
    paths = {"official.pth": root / "official.pth"}
    for layout, name in (("dino", "official.safetensors"), ("timm", "timm.pth"),
                         ("timm", "timm.safetensors"), ("hf", "hf")):
        export_backbone(root / "official.pth", root / name, layout=layout)
        paths[name] = root / name
    paths["hf/model.safetensors"] = root / "hf" / "model.safetensors"
    save_checkpoint({"teacher": state, "student": {"module.backbone." + k: v
                                                   for k, v in other.items()},
                     "config": {"model": {"arch": "vit_tiny", "patch_size": 16}}},
                    root / "project.pth")
    paths["project.pth"] = root / "project.pth"
    save_checkpoint({"teacher": {"backbone." + k: v for k, v in state.items()},
                     "student": {"module.backbone." + k: v for k, v in other.items()},
                     "dino_loss": {"center": torch.zeros(1, 8)},
                     "args": {"arch": "vit_tiny", "patch_size": 16}}, root / "reference.pth")
    paths["reference.pth"] = root / "reference.pth"
    return paths, state


NAMES = ["official.pth", "official.safetensors", "timm.pth", "timm.safetensors", "hf",
         "hf/model.safetensors", "project.pth", "reference.pth"]


@pytest.mark.parametrize("name", NAMES)
def test_init_backbone_and_the_eval_commands_read_every_form(files, name):
    paths, state = files
    got = read_init_backbone(paths[name], "vit_tiny", 16)
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in state.items())
    args = argparse.Namespace(checkpoint=str(paths[name]), arch=None, patch_size=None,
                              checkpoint_key="teacher")
    model, ck = load_cli_backbone(args, "cpu")
    assert ck.name == "vit_tiny/16" and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_an_unknown_file_names_its_first_keys_and_shapes_in_one_line(tmp_path, suffix):
    path = tmp_path / f"resnet{suffix}"
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64)}
    (write_safetensors if suffix == ".safetensors" else save_checkpoint)(state, path)
    for read in (lambda: read_init_backbone(path, "vit_tiny", 16),
                 lambda: load_cli_backbone(argparse.Namespace(
                     checkpoint=str(path), arch=None, patch_size=None,
                     checkpoint_key="teacher"), "cpu")):
        with pytest.raises(CheckpointError) as e:
            read()
        message = str(e.value)
        assert "\n" not in message and str(path) in message
        assert "conv1.weight [64, 3, 7, 7]" in message and "bn1.weight [64]" in message


def test_a_partial_placement_is_an_error_never_a_partial_load(tmp_path):
    hub = hf.from_canonical(canonical_state())
    write_safetensors(dict(hub, **{"encoder.layer.2.attention.attention.rel_bias":
                                   torch.zeros(3)}), tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="rel_bias"):
        read_init_backbone(tmp_path / "extra.safetensors", "vit_tiny", 16)
    del hub["encoder.layer.7.output.dense.weight"]
    write_safetensors(hub, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        read_init_backbone(tmp_path / "missing.safetensors", "vit_tiny", 16)
