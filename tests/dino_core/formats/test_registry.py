"""The format registry: the official DINO layout detected and converted; a new layout is one
registered entry that every reader then accepts; an unknown layout names what it found."""
import pytest
import torch

from dino_core.formats import (FORMATS, BackboneFormat, Canonical, CheckpointError,
                               detect_format, export_backbone, load_backbone, register_format)
from dino_core.formats.dino import DINO
from dino_core.models import build_vit


def tiny_state(seed=0):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_vit("vit_tiny", 16, img_size=32).state_dict().items()}


def test_the_official_dino_layout_is_the_first_entry_and_round_trips():
    assert next(iter(FORMATS)) == "dino" and FORMATS["dino"] is DINO
    state = tiny_state()
    wrapped = {"module.backbone." + k: v for k, v in state.items()}
    assert detect_format(wrapped, "w.pth") is DINO
    canonical = DINO.to_canonical(wrapped, "w.pth")
    assert canonical.head is None and canonical.backbone.keys() == state.keys()
    assert all(torch.equal(canonical.backbone[k], v) for k, v in state.items())
    back = DINO.from_canonical(canonical.backbone)
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())


def test_an_unknown_layout_is_one_error_naming_the_layouts_and_what_was_found():
    state = {"encoder.layer.0.weight": torch.zeros(3, 4), "embeddings.cls": torch.zeros(1, 2)}
    with pytest.raises(CheckpointError) as e:
        detect_format(state, "hf.pth")
    msg = str(e.value)
    assert "hf.pth holds no ViT backbone" in msg and "dino:" in msg
    assert "encoder.layer.0.weight [3, 4]" in msg and "\n" not in msg


def test_a_registered_layout_is_read_by_every_reader_and_written_by_export(tmp_path):
    """A toy layout (every key under ``vit.``, ``cls_token`` renamed ``cls``) stands in for
    the ones to come (timm, Hugging Face): registering it is all a reader needs."""
    def to_canonical(state, source):
        bare = {k.removeprefix("vit."): v for k, v in state.items()}
        bare["cls_token"] = bare.pop("cls")
        return Canonical(bare)

    def from_canonical(backbone):
        out = {"vit." + k: v for k, v in backbone.items() if k != "cls_token"}
        out["vit.cls"] = backbone["cls_token"]
        return out

    toy = BackboneFormat("toy", "vit.* keys", lambda s: "vit.cls" in s, to_canonical,
                         from_canonical)
    register_format(toy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_format(toy)
        state = tiny_state(seed=3)
        torch.save(from_canonical(state), tmp_path / "toy.pth")
        model, ck = load_backbone(tmp_path / "toy.pth")
        assert (ck.layout, ck.name) == ("toy", "vit_tiny/16")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        export_backbone(tmp_path / "toy.pth", tmp_path / "again.pth", layout="toy")
        again = torch.load(tmp_path / "again.pth", weights_only=True)
        assert again.keys() == from_canonical(state).keys()
        export_backbone(tmp_path / "toy.pth", tmp_path / "dino.pth")  # default: official
        assert torch.load(tmp_path / "dino.pth", weights_only=True).keys() == state.keys()
    finally:
        del FORMATS["toy"]
