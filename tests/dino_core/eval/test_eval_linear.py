"""Linear probe: learns a separable toy problem, resumes exactly, features follow the recipe."""
import numpy as np
import pytest
import torch
from PIL import Image

from dino_core.eval.datasets import ProbeTrainFolder
from dino_core.eval.linear import (LinearClassifier, LinearProbeConfig, evaluate_classifier,
                                   probe_features, probe_recipe, train_linear)
from dino_core.models import VisionTransformer

DIM, CLASSES = 16, 4


def toy_problem(n, seed):
    """Gaussian features labelled by a fixed random linear map: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, DIM, generator=g)
    return x, (x @ w).argmax(dim=1)


def batches(x, y, batch=32, seed=0):
    def per_epoch(epoch):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            yield x[idx], y[idx]
    return per_epoch


def test_probe_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    xtr, ytr = toy_problem(512, seed=1)
    xva, yva = toy_problem(256, seed=2)
    clf = LinearClassifier(DIM, CLASSES)
    before = evaluate_classifier(clf, [(xva, yva)])
    cfg = LinearProbeConfig(epochs=15, lr=2.0, batch_size=32)
    best = train_linear(clf, batches(xtr, ytr), 16, cfg, lambda: [(xva, yva)], log=lambda s: None)
    after = evaluate_classifier(clf, [(xva, yva)])
    assert before["top1"] < 60.0
    assert after["top1"] > 90.0 and best["top1"] >= after["top1"]
    assert after["loss"] < before["loss"]
    assert best["top5"] == 100.0  # 4 classes: every class is in the top 5


def test_interrupted_probe_resumes_to_the_same_classifier(tmp_path):
    xtr, ytr = toy_problem(128, seed=3)
    xva, yva = toy_problem(64, seed=4)
    cfg = LinearProbeConfig(epochs=4, lr=1.0, batch_size=32)
    make = lambda: (torch.manual_seed(0), LinearClassifier(DIM, CLASSES))[1]  # noqa: E731
    straight = make()
    train_linear(straight, batches(xtr, ytr), 4, cfg, lambda: [(xva, yva)], log=lambda s: None)

    stop = batches(xtr, ytr)

    def interrupted(epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return stop(epoch)

    path = tmp_path / "linear.pth"
    with pytest.raises(KeyboardInterrupt):
        train_linear(make(), interrupted, 4, cfg, lambda: [(xva, yva)], path, log=lambda s: None)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    resumed = make()
    lines = []
    train_linear(resumed, batches(xtr, ytr), 4, cfg, lambda: [(xva, yva)], path, log=lines.append)
    assert "resumed" in lines[0]
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=5, num_heads=3).eval()


def test_probe_features_follow_the_recipe(tiny_vit):
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        four = probe_features(tiny_vit, x, 4, avgpool=False)
        pooled = probe_features(tiny_vit, x, 1, avgpool=True)
        tokens = tiny_vit.forward_features(x)                       # (B, 1+N, D)
        cls = tiny_vit(x)
    assert four.shape == (2, 4 * 24) and pooled.shape == (2, 2 * 24)
    assert torch.allclose(four[:, -24:], cls, atol=1e-5)             # last block = forward
    assert torch.allclose(pooled[:, :24], cls, atol=1e-5)
    assert torch.allclose(pooled[:, 24:], tokens[:, 1:].mean(dim=1), atol=1e-5)
    assert probe_recipe("vit_small") == (4, False) and probe_recipe("vit_base") == (1, True)


def test_probe_train_view_is_seeded_cropped_and_normalised(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    ds = ProbeTrainFolder(tmp_path, size=32, seed=5)
    x, label = ds[3]
    assert x.shape == (3, 32, 32) and label == 1 and x.dtype == torch.float32
    assert torch.equal(ds[3][0], x)             # same (seed, epoch, index): same view
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], x)         # next epoch: another crop
    assert -3.0 < float(x.min()) and float(x.max()) < 3.0


def test_bad_probe_config_names_the_field():
    with pytest.raises(ValueError, match="'momentum'"):
        LinearProbeConfig(momentum=1.5)
    with pytest.raises(ValueError, match="'epochs'"):
        LinearProbeConfig(epochs=0)
