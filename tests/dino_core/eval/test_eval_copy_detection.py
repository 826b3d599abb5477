"""Copydays layout, the CLS + GeM descriptor, and a synthetic mini benchmark."""
import numpy as np
import pytest
import torch

from dino_core.eval.copy_detection import (cls_gem_descriptor, copy_detection_map, describe,
                                           gem, list_images, open_copydays)
from dino_core.eval.ranking_metrics import average_precision
from pipelines.folder import DatasetError

from .synthetic import write_copydays


@pytest.fixture(scope="module")
def copydays(tmp_path_factory):
    root = tmp_path_factory.mktemp("copydays")
    return root, write_copydays(root)


def test_strong_images_find_their_originals_by_group_prefix(copydays):
    _, cd = copydays
    data = open_copydays(cd)
    assert [p.name for p in data.originals] == ["200000.jpg", "210000.jpg", "220000.jpg",
                                                "230000.jpg"]
    assert len(data.queries) == 12
    assert [int(p[0]) for p in data.positives] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_a_strong_image_without_an_original_is_one_clear_error(copydays, tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "strong").mkdir()
    _, cd = copydays
    for src, dst in (("original/200000.jpg", "original/200000.jpg"),
                     ("strong/200001.jpg", "strong/990001.jpg")):
        (tmp_path / dst).write_bytes((cd / src).read_bytes())
    with pytest.raises(DatasetError, match=r"990001\.jpg has no original: .* starts with '9900'"):
        open_copydays(tmp_path)
    (tmp_path / "strong" / "990001.jpg").unlink()
    (tmp_path / "strong").rmdir()
    with pytest.raises(DatasetError, match="strong subset folder .*strong is missing"):
        open_copydays(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image"):
        list_images(tmp_path / "empty", "distractor")


def test_gem_by_hand():
    """GeM p=4 of (1, 2) is ((1 + 16) / 2) ** 0.25; negative values are clamped to eps."""
    tokens = torch.tensor([[[1.0, -3.0], [2.0, -1.0]]])                    # (1, 2 tokens, 2)
    out = gem(tokens)
    assert out[0, 0] == pytest.approx(8.5 ** 0.25) and out[0, 1] == pytest.approx(1e-6)


def test_descriptor_is_cls_then_gem_of_the_last_block(random_vit):
    vit = random_vit(16)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        d = cls_gem_descriptor(vit)(x)
        tokens = vit.get_intermediate_layers(x)[0]
    assert d.shape == (2, 384)
    assert torch.allclose(d[:, :192], vit(x), atol=1e-5)
    assert torch.allclose(d[:, 192:], gem(tokens[:, 1:]), atol=1e-6)


def test_mini_benchmark_with_edited_copies_as_positives(copydays, random_vit):
    """Four photos, each with a flipped, cropped and colour-jittered copy as strong queries;
    four distractors; whitening learned on twelve other crops. The mAP equals a direct
    recomputation (whitening, normalisation, ranking, AP over the top 20 by hand), and random
    ViT features find the originals far more often than chance."""
    root, cd = copydays
    data = open_copydays(cd)
    vit = random_vit(16)
    distractors = list_images(root / "distractors", "distractor")
    whitening = list_images(root / "whitening", "whitening")
    q = describe(vit, data.queries, "cpu", image_size=48, num_workers=0)
    db = describe(vit, data.originals + distractors, "cpu", image_size=48, num_workers=0)
    wh = describe(vit, whitening, "cpu", image_size=48, num_workers=0)
    got = copy_detection_map(q, db, data.positives, wh, whitening_dim=8)

    mean = wh.double().mean(0)
    cov = (wh.double() - mean).T @ (wh.double() - mean) / wh.shape[0]
    val, vec = torch.linalg.eigh(cov)
    top = vec[:, -8:].flip(1) / (val[-8:].flip(0) + 1e-6).sqrt()          # (D, 8)
    qw = torch.nn.functional.normalize((q.double() - mean) @ top, dim=1)
    dw = torch.nn.functional.normalize((db.double() - mean) @ top, dim=1)
    aps = []
    for k in range(len(data.queries)):
        order = torch.argsort(qw[k] @ dw.T, descending=True).tolist()[:20]
        ranks = [r for r, j in enumerate(order) if j in data.positives[k].tolist()]
        aps.append(average_precision(ranks, len(data.positives[k])))
    assert got == pytest.approx(100 * np.mean(aps), abs=1e-4)
    unwhitened = copy_detection_map(q, db, data.positives)
    # one positive among 8 database images: a random ranking scores (1 + (H_8 - 1) / 2) / 8,
    # about 23
    assert unwhitened > 50
