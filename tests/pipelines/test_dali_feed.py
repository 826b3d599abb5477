"""The host side of the DALI backend: datasets, the epoch feed, JPEG sizes (no DALI needed;
the feed's compiled parameter draw needs numba, which the dali extra installs)."""
import io
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("numba", reason="numba (the dali extra) is not installed")

from pipelines.convert.common import ConvertConfig  # noqa: E402
from pipelines.convert.wds import convert  # noqa: E402
from pipelines.dali_backend.feed import EpochFeed, jpeg_size, looks_complete  # noqa: E402
from pipelines.dali_backend.boxes import view_box  # noqa: E402
from pipelines.dali_backend.readers import FolderDataset, ShardDataset, open_dataset  # noqa: E402
from pipelines.folder import DatasetError  # noqa: E402
from pipelines.order import EpochPlan, epoch_order  # noqa: E402
from pipelines.sampling import param_row, sample_image_params, sample_rng  # noqa: E402
from pipelines.spec import AugmentationSpec  # noqa: E402
from tests.pipelines.images import write_bad_files, write_image_folder  # noqa: E402

SPEC = AugmentationSpec(local_crops=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("feed") / "data", num_classes=2,
                              per_class=5)


def _jpeg(mode="RGB", size=(53, 37), **kw) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode, kw", [("RGB", {}), ("L", {}), ("CMYK", {}),
                                      ("RGB", {"progressive": True}),
                                      ("RGB", {"exif": b"Exif\x00\x00" + bytes(200)}),
                                      ("RGB", {"quality": 20, "subsampling": 0})])
def test_jpeg_size_agrees_with_pil(mode, kw):
    data = _jpeg(mode, (61, 29), **kw)
    assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (61, 29)


def test_jpeg_size_declines_what_it_cannot_read():
    png = io.BytesIO()
    Image.new("RGB", (5, 4)).save(png, format="PNG")
    assert jpeg_size(png.getvalue()) is None
    assert jpeg_size(b"") is None and jpeg_size(b"\xff\xd8\xff") is None
    assert jpeg_size(b"\xff\xd8" + bytes(100)) is None


def test_looks_complete_flags_truncation_only():
    data = np.frombuffer(_jpeg(), np.uint8)
    assert looks_complete(data)
    assert not looks_complete(data[: len(data) // 2])


def test_feed_follows_reference_order_and_streams(folder):
    ds = FolderDataset(folder)
    plan = EpochPlan(len(ds), batch_size=3, seed=5, rank=1, world_size=2, mode="random",
                     drop_last=False)
    feed = EpochFeed(ds, SPEC, plan, start_epoch=4, with_index=True)
    assert plan.batches_per_epoch == 2  # 10 images, 5 per rank, batches of 3 + 2
    order = epoch_order(10, 5, 5, 1, 2)
    got, ids = [], []
    for t in range(2):
        encoded, boxes, rows, meta, index = feed(SimpleNamespace(epoch_idx=1, iteration=t))
        assert boxes.dtype == np.float32 and rows.dtype == np.float64
        for data, box, row, label, i in zip(encoded, boxes, rows, meta, index):
            i = int(i[0])
            got.append(i)
            ids.append(int(label[1]))  # meta: (label, sample id)
            assert np.array_equal(data, np.fromfile(ds.paths[i], np.uint8))
            assert int(label[0]) == ds.labels[i]
            w, h = Image.open(ds.paths[i]).size
            want = sample_image_params(SPEC, w, h, sample_rng(5, 1, 5, i))
            np.testing.assert_array_equal(row, param_row.to_rows(want))
            np.testing.assert_array_equal(box, np.stack([view_box(p, w, h) for p in want]))
    assert got == ids == order.tolist()
    with pytest.raises(StopIteration):
        feed(SimpleNamespace(epoch_idx=1, iteration=2))


def test_feed_replaces_unreadable_files_with_the_next_sample(tmp_path, folder):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    write_bad_files(next(data.iterdir()))
    ds = FolderDataset(data)
    plan = EpochPlan(len(ds), batch_size=len(ds), seed=0, rank=0, world_size=1,
                     mode="sequential", drop_last=True)
    feed = EpochFeed(ds, SPEC, plan, start_epoch=0, with_index=True)
    _, boxes, rows, _, index = feed(SimpleNamespace(epoch_idx=0, iteration=0))
    used = [ds.paths[int(i[0])].rsplit("/", 1)[1] for i in index]
    assert len(used) == len(ds)
    assert "truncated.jpg" not in used and "random_bytes.jpg" not in used
    replaced = 0
    for position, (box, row, j) in enumerate(zip(boxes, rows, index)):
        j = int(j[0])
        replaced += j != position
        w, h = Image.open(ds.paths[j]).size  # the replacement's size, the original's stream
        want = sample_image_params(SPEC, w, h, sample_rng(0, 0, 0, position))
        np.testing.assert_array_equal(row, param_row.to_rows(want))
        np.testing.assert_array_equal(box, np.stack([view_box(p, w, h) for p in want]))
    assert replaced > 0


def test_shard_dataset_reads_what_the_folder_holds(tmp_path, folder):
    dst = tmp_path / "wds"
    convert(ConvertConfig(src=folder, dst=dst, shard_size=4, workers=1, progress=False,
                          max_side=4096))
    shards, files = open_dataset(dst), open_dataset(folder)
    assert isinstance(shards, ShardDataset) and isinstance(files, FolderDataset)
    assert shards.classes == files.classes and len(shards) == len(files) == 10
    for i in range(len(files)):
        (a, la), (b, lb) = shards.read(i), files.read(i)
        assert np.array_equal(a, b) and la == lb
    restored = pickle.loads(pickle.dumps(shards))
    assert np.array_equal(restored.read(3)[0], shards.read(3)[0])


def test_shard_dataset_rejects_inconsistent_folders(tmp_path, folder):
    dst = tmp_path / "wds"
    m = convert(ConvertConfig(src=folder, dst=dst, shard_size=4, workers=1, progress=False))
    idx = dst / m.shards[0]["index"]
    text = idx.read_text()
    idx.write_text(text.replace(f"v1.2 {m.shards[0]['count']}", "v1.2 1"))
    with pytest.raises(DatasetError, match="index"):
        ShardDataset(dst)
    idx.write_text(text)
    (dst / m.shards[2]["name"]).unlink()
    with pytest.raises(DatasetError, match="missing"):
        ShardDataset(dst)
