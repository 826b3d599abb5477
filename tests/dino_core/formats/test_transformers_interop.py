"""Against the real Hugging Face ``transformers`` (the ``interop`` extra; CPU, fp32, random
weights with every norm and bias moved off its init so that a swapped tensor shows):

- our ``--format hf`` export loads into ``ViTModel.from_pretrained(add_pooling_layer=False)``
  with no missing, unexpected or mismatched key, and its ``last_hidden_state[:, 0]`` is our
  backbone's output (within 1e-5; in practice equal) for ViT-S/16 at 224, ViT-T/8 at 64 and,
  under --runslow (~30 s on 2 cores), ViT-B/8 at 224;
- a ``ViTModel`` saved by ``save_pretrained`` is read by ``--init-backbone`` (the run's
  student and teacher) and by ``dino-knn`` (its dumped features) with the features
  transformers computes;
- at a non-square size, with position embeddings interpolated on both sides, the outputs
  differ a little: transformers resizes to an output size, upstream DINO (and this ViT) by
  scale factors (gh + 0.1) / s; bounded here, measured in the README.
"""
import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'dino-fast[interop]')")

from dino_core.formats import export_backbone, load_backbone  # noqa: E402
from dino_core.formats.canonical import vit_from_state  # noqa: E402
from dino_core.formats.files import save_checkpoint  # noqa: E402
from dino_core.models import ARCHS, build_vit  # noqa: E402


def jitter(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every 1-d parameter (norm weights and biases, all biases) off its init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def our_backbone(arch: str, patch: int, img_size: int, seed: int = 0):
    """A ViT with random weights, built without its (slow) init: weights 0.02 * N(0, 1),
    norm weights 1 + 0.1 * N(0, 1), biases 0.1 * N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_vit(arch, patch, img_size=img_size)
                  .state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        state[key] = (0.02 * noise if len(shape) > 1 else
                      1 + 0.1 * noise if "norm" in key and key.endswith("weight") else
                      0.1 * noise)
    return vit_from_state(state, "random")


def exported(tmp_path, backbone):
    """``backbone`` saved as an official file, exported with --format hf, loaded by
    transformers; returns the ViTModel after checking its loading report."""
    save_checkpoint(backbone.state_dict(), tmp_path / "b.pth")
    export_backbone(tmp_path / "b.pth", tmp_path / "hf", layout="hf")
    model, info = transformers.ViTModel.from_pretrained(
        tmp_path / "hf", add_pooling_layer=False, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                     "error_msgs")), info
    return model.eval()


def cls(model, x: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=x, interpolate_pos_encoding=interpolate)
    return out.last_hidden_state[:, 0]


def both(tmp_path, arch, patch, size):
    ours = our_backbone(arch, patch, size)
    return ours, exported(tmp_path, ours)


def assert_same_cls(ours, theirs, size, images=1):
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ours(x)
    assert (cls(theirs, x) - want).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def vit_s16(tmp_path_factory):
    return both(tmp_path_factory.mktemp("s16"), "vit_small", 16, 224)


def test_vit_s16_export_at_224(vit_s16):
    assert_same_cls(*vit_s16, 224, images=2)


def test_patch_8_export(tmp_path):
    assert_same_cls(*both(tmp_path, "vit_tiny", 8, 64), 64)


@pytest.mark.slow
def test_vit_b8_export_at_224(tmp_path):
    assert_same_cls(*both(tmp_path, "vit_base", 8, 224), 224)


def test_non_square_input_with_interpolation_on_both_sides(vit_s16):
    ours, theirs = vit_s16
    x = torch.randn(1, 3, 160, 288, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ours(x)
    diff = (cls(theirs, x, interpolate=True) - want).abs().max().item()
    assert 0 < diff < 1e-2  # different resize rules (module docstring), close features


# ----------------------------------------------------------------------------- import
def saved_vit_model(path, arch="vit_tiny", patch=16, size=224, seed=4):
    """A random ``ViTModel`` of ``arch`` as transformers' ``save_pretrained`` writes it."""
    c = ARCHS[arch]
    config = transformers.ViTConfig(
        hidden_size=c["embed_dim"], num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"], intermediate_size=4 * c["embed_dim"],
        patch_size=patch, image_size=size, layer_norm_eps=1e-6, qkv_bias=True)
    torch.manual_seed(seed)
    model = jitter(transformers.ViTModel(config, add_pooling_layer=False), seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "vit-tiny"
    return path, saved_vit_model(path)


def test_save_pretrained_directory_is_read_with_the_same_features(hf_dir):
    path, model = hf_dir
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for where in (path, path / "model.safetensors"):
        ours, ck = load_backbone(where)
        assert (ck.layout, ck.name) == ("hf", "vit_tiny/16")
        with torch.no_grad():
            assert (ours(x) - cls(model, x)).abs().max().item() <= 1e-5


def test_init_backbone_from_a_save_pretrained_directory(hf_dir, tmp_path):
    from dino_core.train.run import build_run
    from tests.dino_core.train.train_helpers import tiny_config
    from tests.pipelines.images import write_image_folder

    path, model = hf_dir
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=2)
    run = build_run(tiny_config(data, tmp_path / "run", extra=[f"init_backbone={path}"]))
    run.loader.close()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    want = cls(model, x)
    for net in (run.bare_student.backbone, run.teacher.backbone):
        with torch.no_grad():
            assert (net.eval()(x) - want).abs().max().item() <= 1e-5


def test_dino_knn_reads_a_save_pretrained_directory(hf_dir, tmp_path, capsys):
    from dino_core.cli import knn
    from dino_core.eval.features import load_features
    from pipelines.eval_transform import EvalImageFolder

    path, model = hf_dir
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            pix = np.clip(np.array(colour) + rng.normal(0, 40, (40, 56, 3)), 0, 255)
            Image.fromarray(pix.astype(np.uint8)).save(tmp_path / "data" / split / c / "0.png")
    assert knn.main(["--checkpoint", str(path), "--data", str(tmp_path / "data"), "--device",
                     "cpu", "--num-workers", "0", "--batch-size", "2", "--nb-knn", "1",
                     "--dump-features", str(tmp_path / "feats")]) == 0
    _, val = load_features(tmp_path / "feats")
    val_ds = EvalImageFolder(tmp_path / "data" / "val")
    images = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    assert (val.features - cls(model, images)).abs().max().item() <= 1e-5
    capsys.readouterr()
