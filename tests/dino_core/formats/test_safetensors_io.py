"""safetensors files: recognised by content, written atomically, bad ones one clear error,
the package missing one clear error; timm's layout in a .safetensors file."""
import sys

import pytest
import torch

pytest.importorskip("safetensors", reason="safetensors is not installed (the interop extra)")

from dino_core.formats import CheckpointError, export_backbone, load_backbone  # noqa: E402
from dino_core.formats.files import save_checkpoint  # noqa: E402
from dino_core.formats.safetensors_io import (is_safetensors, read_safetensors,  # noqa: E402
                                              write_safetensors)
from tests.dino_core.formats.test_hf import canonical_state  # noqa: E402


def test_content_decides_not_the_name(tmp_path):
    state = canonical_state(seed=5)
    write_safetensors(state, tmp_path / "weights.bin")  # a safetensors file, any name
    save_checkpoint(state, tmp_path / "torch.safetensors")  # a torch file, misnamed
    assert is_safetensors(tmp_path / "weights.bin")
    assert not is_safetensors(tmp_path / "torch.safetensors")
    for name in ("weights.bin", "torch.safetensors"):
        model, ck = load_backbone(tmp_path / name)
        assert ck.layout == "dino"
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("layout", ["dino", "timm"])
def test_official_and_timm_exports_in_safetensors_hold_the_official_keys(tmp_path, layout):
    state = canonical_state(seed=6)
    state["blocks.0.norm1.weight"] = state["blocks.0.norm1.weight"].half()  # dtypes kept
    save_checkpoint(state, tmp_path / "b.pth")
    export_backbone(tmp_path / "b.pth", tmp_path / "out.safetensors", layout=layout)
    got = read_safetensors(tmp_path / "out.safetensors")
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in state.items())
    export_backbone(tmp_path / "out.safetensors", tmp_path / "again.pth")
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()


def test_truncated_file_is_one_error_naming_it(tmp_path):
    write_safetensors(canonical_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="w.safetensors is corrupt or truncated") as e:
        load_backbone(tmp_path / "w.safetensors")
    assert "\n" not in str(e.value)


def test_missing_package_is_one_error_with_the_install_command(tmp_path, monkeypatch):
    write_safetensors(canonical_state(), tmp_path / "w.safetensors")
    for name in ("safetensors", "safetensors.torch"):  # None in sys.modules: import fails
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(CheckpointError, match=r"reading .*w.safetensors needs the "
                                              r"'safetensors' package.*dino-fast\[interop\]"):
        load_backbone(tmp_path / "w.safetensors")
