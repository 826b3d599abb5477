"""Unlabeled folders (images at any depth, no class folders) through every training backend:
reference and DALI over the raw folder and over dino-convert's output, FFCV over its .beton.
Labels are -1 and the loaders report no classes (so k-NN at the end is skipped)."""
from pathlib import Path

import pytest

from pipelines import build_loader
from pipelines.convert.common import ConvertConfig
from pipelines.folder import scan_image_folder
from tests.pipelines.images import photo_crop
from tests.reliability.checks import PLAIN_SPEC, ffcv_epochs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "unsorted"
    (root / "trip" / "day1").mkdir(parents=True)
    for i in range(3):
        photo_crop((40, 30)).save(root / f"top{i}.jpg")
        photo_crop((30, 40)).save(root / "trip" / "day1" / f"p{i}.jpg")
    return root


def _one_epoch(data, backend: str, n: int):
    loader = build_loader(data, backend, batch_size=n, spec=PLAIN_SPEC, num_workers=1,
                          shuffle=False, drop_last=False)
    try:
        (views, labels), = [(b.views, b.labels) for b in loader]
    finally:
        loader.close()
    return loader, views, labels


def test_scan_auto_detects_unlabeled(photos):
    scan = scan_image_folder(photos)
    assert not scan.labelled and len(scan.samples) == 6 and {y for _, y in scan.samples} == {-1}


def test_reference_backend_over_the_raw_folder(photos):
    loader, views, labels = _one_epoch(photos, "reference", 6)
    assert loader.classes == [] and labels.tolist() == [-1] * 6 and views[0].shape[0] == 6


@pytest.mark.dali
def test_dali_backend_raw_and_converted(photos, tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines.convert.wds import convert
    for data in (photos, tmp_path / "wds"):
        if data != photos:
            convert(ConvertConfig(src=photos, dst=data, progress=False, workers=1))
        loader, views, labels = _one_epoch(data, "dali", 6)
        assert loader.classes == [] and labels.tolist() == [-1] * 6, data


@pytest.mark.ffcv
def test_ffcv_backend_over_the_converted_beton(photos, tmp_path):
    pytest.importorskip("ffcv")
    from pipelines.convert.beton import convert
    m = convert(ConvertConfig(src=photos, dst=tmp_path / "ffcv", format="ffcv", progress=False,
                              workers=1, verify=False))
    assert m.labelled is False and m.classes == []
    proc, (result,) = ffcv_epochs(tmp_path / "ffcv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["error"] is None and result["labels"] == [-1] * 6


def test_knn_at_the_end_is_skipped_with_a_reason():
    from types import SimpleNamespace

    from dino_core.train.loop import knn_skip_reason
    unlabeled = SimpleNamespace(loader=SimpleNamespace(classes=[]), knn_root=Path("/x"))
    assert "unlabeled" in knn_skip_reason(unlabeled)
    labelled = SimpleNamespace(loader=SimpleNamespace(classes=["a"]), knn_root=None)
    assert "no train/ and val/" in knn_skip_reason(labelled)
    assert knn_skip_reason(SimpleNamespace(loader=SimpleNamespace(classes=["a"]),
                                           knn_root=Path("/x"))) is None


def test_dino_train_on_an_unlabeled_folder_skips_knn_with_a_reason(photos, tmp_path, caplog):
    """A real (tiny) training run with knn_eval on: it trains, then says why no k-NN."""
    import logging

    from dino_core.train.loop import train
    from tests.dino_core.train.train_helpers import tiny_config

    cfg = tiny_config(photos, tmp_path / "run", epochs=1, iters=1, extra=["knn_eval=true"])
    with caplog.at_level(logging.INFO, logger="dino_core.train"):
        summary = train(cfg)
    assert "knn" not in summary and "unlabeled" in summary["knn_skipped"]
    assert any("k-NN evaluation skipped" in r.getMessage() for r in caplog.records)
