"""Revisited Oxford/Paris layout, protocols, and a synthetic mini benchmark of embedded photos."""
import pickle

import numpy as np
import pytest
import torch

from dino_core.eval.datasets import ImageList
from dino_core.eval.ranking_metrics import average_precision
from dino_core.eval.retrieval import (crop_to_patches, extract_retrieval_features,
                                      load_ground_truth, multiscale_cls, open_revisited,
                                      retrieval_map)
from pipelines.folder import DatasetError

from .synthetic import write_revisited


@pytest.fixture(scope="module")
def revisited(tmp_path_factory):
    root = tmp_path_factory.mktemp("revisited")
    return root, write_revisited(root)


def test_protocols_split_easy_hard_and_junk(revisited):
    """Medium: positives easy + hard, junk ignored. Hard: positives hard, easy joins junk."""
    root, truth = revisited
    bench = open_revisited(root, "synth")
    assert bench.queries == truth["qimlist"] and len(bench.images) == 16
    pos, junk = bench.protocol("medium")
    assert sorted(pos[1].tolist()) == [4, 5, 6] and junk[1].tolist() == [7]
    pos, junk = bench.protocol("hard")
    assert pos[1].tolist() == [6] and sorted(junk[1].tolist()) == [4, 5, 7]


def test_ground_truth_that_does_not_match_the_images_is_one_clear_error(revisited, tmp_path):
    root, truth = revisited
    (root / "synth" / "jpg" / "coffee_flip.jpg").rename(tmp_path / "away.jpg")
    try:
        with pytest.raises(DatasetError, match=r"does not match the images: .*coffee_flip\.jpg "
                                               r"is missing \(1 of 20"):
            open_revisited(root, "synth")
    finally:
        (tmp_path / "away.jpg").rename(root / "synth" / "jpg" / "coffee_flip.jpg")
    bad = dict(truth, gnd=truth["gnd"][:3])
    (tmp_path / "b" / "jpg").mkdir(parents=True)
    with open(tmp_path / "b" / "gnd_b.pkl", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(DatasetError, match="3 'gnd' entries for 4 queries"):
        open_revisited(tmp_path, "b")
    with pytest.raises(DatasetError, match="jpg/ and gnd_none.pkl"):
        open_revisited(tmp_path, "none")


def test_ground_truth_pickles_that_run_code_are_refused(tmp_path):
    path = tmp_path / "gnd_x.pkl"
    with open(path, "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [], "bad": torch.nn.Identity}, f)
    with pytest.raises(DatasetError, match="global torch.nn.modules.linear.Identity is not "
                                           "allowed"):
        load_ground_truth(path)
    with open(path, "wb") as f:
        pickle.dump({"gnd": [{"easy": np.arange(3), "bbx": (1.0, 2.0, 3.0, 4.0)}]}, f)
    assert load_ground_truth(path)["gnd"][0]["easy"].tolist() == [0, 1, 2]


def test_images_are_shrunk_keeping_aspect_and_cropped_to_patches(tmp_path):
    from PIL import Image
    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "a.jpg")
    x, i = ImageList([tmp_path / "a.jpg"], max_side=96)[0]
    assert x.shape == (3, 64, 96) and i == 0
    boxed, _ = ImageList([tmp_path / "a.jpg"], boxes=[(10, 20, 110, 70)])[0]
    assert boxed.shape == (3, 50, 100)
    assert crop_to_patches(boxed[None], 16).shape == (1, 3, 48, 96)


def test_multiscale_feature_is_the_normalised_mean_over_scales(random_vit):
    vit = random_vit(16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = vit(x) + vit(torch.nn.functional.interpolate(x, scale_factor=0.5,
                                                            mode="bilinear"))
        got = multiscale_cls(vit, (1.0, 0.5))(x)
    assert torch.allclose(got, torch.nn.functional.normalize(want, dim=1), atol=1e-5)


def test_mini_benchmark_with_edited_copies_as_positives(revisited, random_vit):
    """Queries: 4 photos; positives: flipped, cropped, colour-jittered copies; junk: a dark
    copy. The mAP equals a direct recomputation from the features, and even random ViT
    features (which compare patch colours) rank copies far above chance."""
    root, _ = revisited
    bench = open_revisited(root, "synth")
    vit = random_vit(16)
    q, db = extract_retrieval_features(vit, bench, "cpu", image_size=64, scales=(1.0,),
                                       num_workers=0)
    maps = retrieval_map(q, db, bench)
    for which in ("medium", "hard"):
        pos, junk = bench.protocol(which)
        aps = []
        for k in range(len(bench.queries)):
            order = torch.argsort(q[k] @ db.T, descending=True, stable=True).tolist()
            kept = [j for j in order if j not in junk[k].tolist()]
            aps.append(average_precision([r for r, j in enumerate(kept) if j in pos[k]],
                                         len(pos[k])))
        assert maps[which] == pytest.approx(100 * np.mean(aps))
    assert maps["medium"] > 70  # chance (3 of 15 ranked images) is about 30
