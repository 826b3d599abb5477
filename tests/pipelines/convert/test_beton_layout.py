"""Our .beton writer against FFCV itself: the layout's dtypes equal FFCV's, and FFCV's stock
Loader with stock decoders reads what we wrote, pixels equal to PIL's decode of the stored
JPEG bytes (which, passed through, are the input file's bytes)."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from pipelines.convert import beton, beton_layout  # noqa: E402
from pipelines.convert.common import ConvertConfig  # noqa: E402
from tests.pipelines.images import photo_crop  # noqa: E402
from tests.reliability.checks import REPO  # noqa: E402


def test_dtypes_equal_ffcvs_own():
    from ffcv import types
    from ffcv.fields import IntField, RGBImageField

    assert beton_layout.HEADER == types.HeaderType
    assert beton_layout.FIELD_DESC == types.FieldDescType
    assert beton_layout.ALLOC_ENTRY == types.ALLOC_TABLE_TYPE
    assert beton_layout.SAMPLE_META == types.get_metadata_type([RGBImageField(), IntField()])
    assert beton_layout.VERSION == types.CURRENT_VERSION
    assert types.TYPE_ID_HANDLER[beton_layout.IMAGE_TYPE_ID] is RGBImageField
    assert types.TYPE_ID_HANDLER[beton_layout.INT_TYPE_ID] is IntField


def _load(path: Path, tmp: Path, kind: str, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    out = tmp / f"{kind}.npz"
    proc = subprocess.run([sys.executable, "-m", "tests.pipelines.convert.ffcv_loader_child",
                           str(path), str(out), kind, str(size)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    return got["images"], got["labels"]


def _stored_bytes(path: Path) -> list[bytes]:
    from ffcv.reader import Reader

    r = Reader(str(path))
    sizes = dict(zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()))
    data = path.read_bytes()
    return [data[p:p + sizes[p]] for p in r.metadata["f0"]["data_ptr"].tolist()]


@pytest.fixture(scope="module")
def same_size(tmp_path_factory):
    """3 classes of 40x30 JPEGs (passed through) and a 40x30 PNG (re-encoded)."""
    root = tmp_path_factory.mktemp("src") / "train"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            photo_crop((40, 30)).rotate(90 * i, expand=False).save(
                root / f"c{c}" / f"{i}.jpg", quality=85 + c)
    photo_crop((40, 30)).save(root / "c1" / "png.png")
    dst = tmp_path_factory.mktemp("out")
    manifest = beton.convert(ConvertConfig(src=root, dst=dst, format="ffcv", workers=2,
                                           progress=False, max_side=64, verify=False))
    return root, dst / "train.beton", manifest


def test_stock_loader_reads_exact_pixels_of_the_stored_bytes(same_size, tmp_path):
    root, path, manifest = same_size
    images, labels = _load(path, tmp_path, "simple")
    samples = sorted((str(p), int(p.parent.name[1:])) for p in root.rglob("*.*"))
    assert manifest.stored == {"passed": 9, "reencoded": 1}
    assert labels.tolist() == [y for _, y in samples]
    stored = _stored_bytes(path)
    for (p, _), got, data in zip(samples, images, stored):
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if p.endswith(".jpg"):  # stored byte for byte
            assert data == Path(p).read_bytes(), p
        else:  # re-encoded at quality 90: close to the original
            original = np.asarray(Image.open(p).convert("RGB"), dtype=float)
            assert np.abs(want - original).mean() < 10  # measured 6.0: a tiny textured crop
        assert got.shape == want.shape
        # FFCV decodes with libjpeg-turbo's fast upsampling/IDCT, PIL with the exact ones:
        # measured max 5, mean 1.0 on these crops; another image differs by tens
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 8 and diff.mean() < 2.0, p


def test_stock_random_resized_crop_decoder_reads_mixed_sizes(tmp_path):
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for i, size in enumerate([(40, 30), (17, 50), (64, 64), (300, 120)]):
        photo_crop(size).save(root / "a" / f"{i}.jpg", quality=90)
    beton.convert(ConvertConfig(src=root, dst=tmp_path / "o", format="ffcv", workers=1,
                                progress=False, max_side=100, verify=False))
    images, labels = _load(tmp_path / "o" / "src.beton", tmp_path, "rrc", 24)
    assert images.shape == (4, 24, 24, 3) and labels.tolist() == [0] * 4
    assert images.std() > 5  # real picture content, not zeros


def test_pages_hold_samples_whole_and_metadata_points_into_them(same_size):
    from ffcv.reader import Reader

    _, path, _ = same_size
    r = Reader(str(path))
    page = int(r.page_size)
    start = beton_layout.data_start(10, page)
    for ptr, size in zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()):
        assert ptr >= start and ptr // page == (ptr + size - 1) // page
    assert sorted(r.metadata["f0"]["data_ptr"].tolist()) == sorted(r.alloc_table["ptr"].tolist())
    data = path.read_bytes()
    for ptr, size in zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()):
        Image.open(io.BytesIO(data[ptr:ptr + size])).load()


def test_many_pages_from_two_workers_digest_equals_the_sequential_twin(tmp_path, monkeypatch):
    """Small pages so that each worker fills several: the checksum assembled from the
    workers' page digests equals block_digest over the finished file, and every sample's
    bytes are whole inside one page."""
    from ffcv.reader import Reader

    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for i in range(40):
        photo_crop((60, 45)).save(root / "a" / f"{i:02d}.jpg", quality=95)
    monkeypatch.setattr(beton, "PAGE_SIZE", 1 << 14)  # 16 KiB pages: ~3 images per page
    m = beton.convert(ConvertConfig(src=root, dst=tmp_path / "o", format="ffcv", workers=2,
                                    progress=False, max_side=100, verify=False))
    path = tmp_path / "o" / "src.beton"
    shard = m.shards[0]
    assert shard["block_size"] == 1 << 14
    assert shard["sha256_blocks"] == beton_layout.block_digest(str(path), 1 << 14)
    stored = _stored_bytes(path)
    assert len(stored) == 40 and int(Reader(str(path)).page_size) == 1 << 14
    for i, data in enumerate(stored):
        assert data == (root / "a" / f"{i:02d}.jpg").read_bytes()
