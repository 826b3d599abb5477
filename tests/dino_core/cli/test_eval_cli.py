"""dino-knn, dino-linear, dino-attn, dino-export end to end on a few generated images."""
import numpy as np
import pytest
import torch
from PIL import Image

from dino_core.cli import attn, export, knn, linear
from dino_core.eval.features import load_features
from dino_core.eval.knn import knn_classify
from dino_core.models import DINOHead, MultiCropWrapper, build_vit
from pipelines.eval_transform import EvalImageFolder

K = 32


@pytest.mark.parametrize("cli,words", [(knn, ["--nb-knn", "exp(similarity / T)", "torchrun"]),
                                       (linear, ["last 4 blocks", "cosine", "--evaluate"]),
                                       (attn, ["--threshold", "mask-head", "grid.png"]),
                                       (export, ["backbone-only", "strict=True"])])
def test_help_teaches(cli, words, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.main(["--help"])
    assert ex.value.code == 0
    text = capsys.readouterr().out
    for w in words + ["--checkpoint", "pickle Python objects"]:
        assert w in text, w


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A vit_tiny/16 checkpoint in this project's layout and a 2-class train/val image tree."""
    root = tmp_path_factory.mktemp("eval_cli")
    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", 16)
    teacher = MultiCropWrapper(backbone, DINOHead(192, K, hidden_dim=32, bottleneck_dim=16))
    torch.save({"student": {"module." + k: v for k, v in teacher.state_dict().items()},
                "teacher": teacher.state_dict(), "optimizer": {}, "epoch": 1, "iteration": 4,
                "dino_loss": {"center": torch.zeros(1, K)},
                "config": {"model": {"arch": "vit_tiny", "patch_size": 16, "out_dim": K}}},
               root / "checkpoint.pth")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                pix = np.clip(np.array(colour) + rng.normal(0, 40, (48, 64, 3)), 0, 255)
                Image.fromarray(pix.astype(np.uint8)).save(root / "data" / split / c / f"{i}.png")
    return root, backbone.eval()


def test_knn_end_to_end_with_dump_and_reload(workspace, capsys):
    root, backbone = workspace
    args = ["--checkpoint", str(root / "checkpoint.pth"), "--data", str(root / "data"),
            "--device", "cpu", "--num-workers", "0", "--batch-size", "3", "--nb-knn", "1", "5"]
    assert knn.main(args + ["--dump-features", str(root / "feats")]) == 0
    printed = capsys.readouterr().out
    train, val = load_features(root / "feats")
    val_ds = EvalImageFolder(root / "data" / "val")
    images = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    with torch.no_grad():
        assert torch.allclose(val.features, backbone(images), atol=1e-5)
    assert train.features.shape == (6, 192) and val.labels.tolist() == [0, 0, 1, 1]
    table = knn.format_results(knn_classify(train, val, ks=(1, 5)), 0.07)
    assert table in printed and "k clipped to the 5 train images" not in table
    assert knn.main(["--load-features", str(root / "feats"), "--nb-knn", "1", "5",
                     "--device", "cpu"]) == 0
    assert table in capsys.readouterr().out


def test_knn_on_a_checkpoint_of_another_architecture_is_one_clear_error(workspace, capsys):
    root, _ = workspace
    rc = knn.main(["--checkpoint", str(root / "checkpoint.pth"), "--data", str(root / "data"),
                   "--arch", "vit_small", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "vit_tiny/16" in err and "vit_small/16" in err
    rc = knn.main(["--checkpoint", str(root / "checkpoint.pth"), "--data", str(root / "none"),
                   "--device", "cpu"])
    assert rc == 2 and "train/ and val/" in capsys.readouterr().err


def test_export_writes_an_official_backbone_file(workspace, tmp_path, capsys):
    root, backbone = workspace
    assert export.main(["--checkpoint", str(root / "checkpoint.pth"),
                        "--output", str(tmp_path / "b.pth")]) == 0
    state = torch.load(tmp_path / "b.pth", weights_only=True)
    assert set(state) == set(backbone.state_dict()) and len(state) == 150
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())
    assert "vit_tiny/16" in capsys.readouterr().out


def test_attn_writes_pictures(workspace, tmp_path, capsys):
    root, _ = workspace
    rc = attn.main(["--checkpoint", str(root / "checkpoint.pth"), "--image",
                    str(root / "data" / "val" / "red" / "0.png"), "--output-dir",
                    str(tmp_path / "a"), "--image-size", "64", "--device", "cpu"])
    assert rc == 0
    with Image.open(tmp_path / "a" / "attn-head2.png") as im:
        assert im.size == (80, 64)  # 48x64 -> 64x85 -> cropped to multiples of 16
    assert (tmp_path / "a" / "grid.png").is_file() and "3 heads" in capsys.readouterr().out


def test_linear_trains_checkpoints_and_evaluates(workspace, tmp_path, capsys):
    root, _ = workspace
    common = ["--checkpoint", str(root / "checkpoint.pth"), "--data", str(root / "data"),
              "--output-dir", str(tmp_path), "--device", "cpu", "--num-workers", "0",
              "--batch-size", "4"]
    assert linear.main(common + ["--epochs", "1", "--lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "4 block(s) -> 768 features, 2 classes, 6 train / 4 val images" in out
    saved = torch.load(tmp_path / "linear.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["classifier"]["linear.weight"].shape == (2, 768)
    assert linear.main(common + ["--evaluate"]) == 0
    assert "top-1" in capsys.readouterr().out
