"""The Hugging Face DINOv2 layout against the real ``transformers`` (the ``interop`` extra):
a backbone with DINOv2's parts exported with ``--format hf`` loads into ``Dinov2Model`` (with
registers: ``Dinov2WithRegistersModel``) with no missing or unexpected key and the same CLS
output, and reads back bit-identically; a ``Dinov2Model`` saved by ``save_pretrained`` is
read with the features transformers computes (ViT-T/14 at 28 px, CPU, fp32)."""
import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'dino-fast[interop]')")

from dino_core.cli import export  # noqa: E402
from dino_core.formats import load_backbone  # noqa: E402
from dino_core.formats.files import save_checkpoint  # noqa: E402
from dino_core.models import build_vit  # noqa: E402

from .test_transformers_interop import jitter  # noqa: E402

CASES = {
    "layerscale": {"layerscale": 1e-5, "mask_token": True},
    "registers": {"layerscale": 1e-5, "num_register_tokens": 4, "mask_token": True},
    "swiglu": {"layerscale": 1e-5, "ffn_layer": "swiglu"},
}


def random_vit(**options):
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 14, img_size=28, **options).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("case", ["layerscale", "swiglu",
                                  pytest.param("registers", marks=pytest.mark.slow)])
def test_export_loads_into_transformers_with_the_same_features(tmp_path, case, capsys):
    ours = random_vit(**CASES[case])
    save_checkpoint(ours.state_dict(), tmp_path / "b.pth")
    assert export.main(["--checkpoint", str(tmp_path / "b.pth"), "--output",
                        str(tmp_path / "hf"), "--format", "hf"]) == 0
    capsys.readouterr()
    model_class = (transformers.Dinov2WithRegistersModel if case == "registers"
                   else transformers.Dinov2Model)
    theirs, info = model_class.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                     "error_msgs")), info
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ours(x)
        assert (theirs.eval()(pixel_values=x).last_hidden_state[:, 0] - want).abs().max() <= 1e-5
    back, ck = load_backbone(tmp_path / "hf")
    assert ck.layout == "hf-dinov2"
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())


@pytest.mark.slow
def test_a_plain_backbone_as_dinov2_gets_identity_layer_scale(tmp_path, capsys):
    ours = random_vit()  # DINO's ViT: no LayerScale, no mask token
    save_checkpoint(ours.state_dict(), tmp_path / "b.pth")
    assert export.main(["--checkpoint", str(tmp_path / "b.pth"), "--output",
                        str(tmp_path / "hf"), "--format", "hf-dinov2"]) == 0
    capsys.readouterr()
    theirs = transformers.Dinov2Model.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (theirs(pixel_values=x).last_hidden_state[:, 0] - ours(x)).abs().max() <= 1e-5


def test_save_pretrained_dinov2_directory_is_read_with_the_same_features(tmp_path):
    config = transformers.Dinov2Config(hidden_size=192, num_hidden_layers=12,
                                       num_attention_heads=3, patch_size=14, image_size=28,
                                       layerscale_value=0.5)
    torch.manual_seed(3)
    theirs = jitter(transformers.Dinov2Model(config), 3)
    theirs.save_pretrained(tmp_path / "dinov2")
    ours, ck = load_backbone(tmp_path / "dinov2")
    assert (ck.layout, ck.name) == ("hf-dinov2", "vit_tiny/14")
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (theirs(pixel_values=x).last_hidden_state[:, 0] - ours(x)).abs().max() <= 1e-5
