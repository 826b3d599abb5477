"""Webdataset shards users already have, written here by the ``webdataset`` library itself:
KEY.jpg / .jpeg / .png with a .cls, a .json or no label, and samples without an image
(skipped, counted). Indexed once next to the shards (or in a cache folder when the data
folder is read-only), then read by the DALI executor; a cut tar is one error naming it."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

wds = pytest.importorskip("webdataset", reason="webdataset is not installed (the dev extra)")

from pipelines.dali_backend import stock_shards  # noqa: E402
from pipelines.dali_backend.readers import open_dataset  # noqa: E402
from pipelines.folder import DatasetError  # noqa: E402


def encoded(i: int, fmt: str) -> bytes:
    """A small distinct picture, 24-40 px a side, as JPEG or PNG bytes."""
    rng = np.random.default_rng(i)
    h, w = (int(x) for x in rng.integers(24, 41, 2))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def sample(i: int) -> dict:
    """Sample i: cycles through jpg+cls, jpeg+json label, png without label, text only."""
    kind = i % 4
    if kind == 0:
        return {"__key__": f"s{i:04d}", "jpg": encoded(i, "JPEG"), "cls": i % 3}
    if kind == 1:
        return {"__key__": f"s{i:04d}", "jpeg": encoded(i, "JPEG"),
                "json": {"label": i % 3, "caption": "a picture"}}
    if kind == 2:
        return {"__key__": f"dir.v2/s{i:04d}", "png": encoded(i, "PNG")}
    return {"__key__": f"s{i:04d}", "txt": "no image here"}


N = 20  # 15 with an image, 5 without


@pytest.fixture()
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    with wds.ShardWriter(str(root / "part-%04d.tar"), maxcount=8, verbose=0) as sink:
        for i in range(N):
            sink.write(sample(i))
    return root


def image_bytes(i: int) -> bytes:
    return next(v for k, v in sample(i).items() if k in ("jpg", "jpeg", "png"))


def test_shards_are_indexed_once_and_read_in_place(shards, caplog):
    with caplog.at_level(logging.INFO, logger="pipelines.dali_backend.stock_shards"):
        ds = open_dataset(shards)
    assert isinstance(ds, stock_shards.StockShardDataset)
    assert sorted(p.name for p in shards.glob("*.idx")) == [
        "part-0000.idx", "part-0001.idx", "part-0002.idx"]
    with_image = [i for i in range(N) if i % 4 != 3]
    assert len(ds) == len(with_image) and ds.no_image == N - len(with_image)
    for n, i in enumerate(with_image):
        data, label = ds.read(n)
        assert data.tobytes() == image_bytes(i)
        assert label == (i % 3 if i % 4 in (0, 1) else -1)
    assert ds.classes == ["0", "1", "2"]
    line = [r.getMessage() for r in caplog.records if "without a manifest" in r.getMessage()]
    assert line == [f"{shards}: 3 webdataset shards without a manifest: 15 samples (5 without "
                    "an image skipped), 10 labelled, 3 classes (from the labels)"]
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.idx")}
    open_dataset(shards)  # indexes kept: not written again
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.idx")} == stamps


def test_a_read_only_folder_gets_its_indexes_in_the_cache(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(stock_shards, "writable", lambda folder: False)
    monkeypatch.setenv("DINO_INDEX_CACHE", str(tmp_path / "cache"))
    ds = open_dataset(shards)
    assert not list(shards.glob("*.idx")) and len(ds) == 15
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.startswith("shards-") and len(list(cached.glob("*.idx"))) == 3


def test_member_names_split_as_webdataset_does():
    assert stock_shards.split_name("a/b.c/key.seg.png") == ("a/b.c/key", "seg.png")
    assert stock_shards.split_name("KEY.JPG") == ("KEY", "jpg")


def test_a_cut_or_foreign_tar_is_one_error_naming_it(shards):
    tar = shards / "part-0001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    with pytest.raises(DatasetError) as e:
        open_dataset(shards)
    assert str(tar) in str(e.value) and "expected webdataset shards" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_shard_cut_after_indexing_is_one_error(shards):
    open_dataset(shards)
    tar = shards / "part-0000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:len(data) // 2])
    (shards / "part-0000.idx").touch()  # the index stays newer than the shard
    with pytest.raises(DatasetError, match="part-0000.tar is shorter than its index"):
        open_dataset(shards)


def test_shards_without_images_or_with_bad_labels(tmp_path):
    root = tmp_path / "text"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as sink:
        sink.write({"__key__": "x", "txt": "hi"})
    with pytest.raises(DatasetError, match="hold no image samples"):
        open_dataset(root)
    with wds.TarWriter(str(root / "a.tar")) as sink:
        sink.write({"__key__": "x", "jpg": encoded(0, "JPEG"), "cls": "cat"})
    with pytest.raises(DatasetError, match="label of sample x.cls is not a decimal integer"):
        open_dataset(root)


@pytest.mark.dali
def test_the_dali_executor_reads_stock_shards(shards):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    from pipelines.loader import build_loader
    from tests.pipelines.test_dali_loader import SPEC

    with build_loader(shards, backend="dali", batch_size=5, spec=SPEC, num_workers=1,
                      seed=7, debug=True) as loader:
        ds = loader.backend.dataset
        assert len(loader) == 3 and loader.num_samples == 15
        loader.set_epoch(0)
        seen = []
        for batch in loader:
            index = loader.backend.last_info["index"].numpy()
            assert np.array_equal(batch.labels.numpy(), ds.labels[index])
            assert [tuple(v.shape) for v in batch.views] == [(5, 3, 32, 32)] * 2 + [
                (5, 3, 16, 16)] * 2
            seen.extend(index.tolist())
        assert sorted(seen) == list(range(15))


@pytest.mark.dali
def test_dino_train_on_a_cut_shard_says_so_in_one_line(shards, tmp_path, capsys):
    from dino_core.cli.train import main as train_main
    from tests.dino_core.train.train_helpers import tiny_overrides

    tar = shards / "part-0002.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    argv = [a for o in tiny_overrides(shards, tmp_path / "run") for a in ("--set", o)]
    assert train_main(argv + ["--backend", "dali"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dino-train: error: ") and str(tar) in err[0]


@pytest.mark.dali
@pytest.mark.slow  # ~20 s on a busy 2-core machine; the loader test above reads the same
def test_dino_train_runs_on_stock_shards(shards, tmp_path, capsys):
    from dino_core.cli.train import main as train_main
    from tests.dino_core.train.train_helpers import tiny_overrides

    argv = [a for o in tiny_overrides(shards, tmp_path / "run", epochs=1, batch=5, iters=2)
            for a in ("--set", o)]
    assert train_main(argv + ["--backend", "dali"]) == 0
    assert "final loss" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoint.pth").is_file()
