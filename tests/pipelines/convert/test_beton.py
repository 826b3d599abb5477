"""dino-convert --format ffcv: a .beton written by our streaming writer in FFCV's layout,
read by FFCV's own Reader; manifest, bad files, write modes, and what an interrupted or
repeated conversion leaves behind."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from ffcv.reader import Reader  # noqa: E402

from pipelines.convert import beton, prepare  # noqa: E402
from pipelines.convert.cli import main as convert_main  # noqa: E402
from pipelines.convert.beton_layout import block_digest  # noqa: E402
from pipelines.convert.common import ConvertConfig  # noqa: E402
from pipelines.formats.manifest import Manifest  # noqa: E402
from pipelines.folder import DatasetError, scan_image_folder  # noqa: E402
from tests.pipelines.images import photo_crop, write_bad_files, write_image_folder  # noqa: E402

MAX_SIDE = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 4 photo crops, a PNG named .jpg, a CMYK and a grayscale JPEG, a 1x1
    image, a transparent PNG, and the bad-file zoo in the first class."""
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", 3, 4, (40, 64))
    classes = sorted(root.iterdir())
    photo_crop((90, 70)).save(classes[1] / "big.jpg", format="PNG")
    Image.new("CMYK", (30, 20), (10, 200, 30, 0)).save(classes[1] / "cmyk.jpg")
    Image.new("L", (40, 30), 128).save(classes[2] / "gray.jpg")
    Image.new("RGB", (1, 1), (9, 99, 199)).save(classes[2] / "dot.jpg", quality=95)
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(classes[2] / "clear.png")
    write_bad_files(classes[0])
    return root


def _cfg(src, dst, **kw):
    kw = {"workers": 2, "progress": False, "max_side": MAX_SIDE, "format": "ffcv", **kw}
    return ConvertConfig(src=Path(src), dst=Path(dst), **kw)


def read_beton(path: Path) -> list[tuple[np.ndarray, int, int]]:
    """Every sample as (RGB uint8 [H, W, 3], label, mode), read with FFCV's own reader."""
    reader = Reader(str(path))
    sizes = {int(r["ptr"]): int(r["size"]) for r in reader.alloc_table}
    data = path.read_bytes()
    out = []
    for image, label in zip(reader.metadata["f0"], reader.metadata["f1"]):
        ptr, h, w = int(image["data_ptr"]), int(image["height"]), int(image["width"])
        payload = data[ptr:ptr + sizes[ptr]]
        if image["mode"] == 0:  # jpg
            pixels = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        else:
            pixels = np.frombuffer(payload, np.uint8).reshape(h, w, 3)
        out.append((pixels, int(label), int(image["mode"])))
    return out


def originals(root: Path) -> list[tuple[np.ndarray, int]]:
    """The good images, as the converter should see them, in conversion order."""
    good = [s for s in scan_image_folder(root, verify=True).samples]
    return [(np.asarray(prepare.decode_rgb(Path(p).read_bytes())), label) for p, label in good]


@pytest.fixture(scope="module")
def converted(folder, tmp_path_factory):
    dst = tmp_path_factory.mktemp("out")
    return dst, beton.convert(_cfg(folder, dst))


def test_round_trip_keeps_every_good_image_with_its_label(folder, converted):
    dst, manifest = converted
    samples, want = read_beton(dst / "train.beton"), originals(folder)
    assert manifest.format == "ffcv" and manifest.num_samples == len(want) == len(samples) == 17
    assert manifest.classes == scan_image_folder(folder).classes
    for (pixels, label, mode), (image, want_label) in zip(samples, want):
        assert label == want_label and mode == 0
        if max(image.shape[:2]) > MAX_SIDE:  # shrunk to max_side (bicubic)
            assert max(pixels.shape[:2]) == MAX_SIDE
            image = np.asarray(Image.fromarray(image).resize(pixels.shape[1::-1],
                                                             Image.BICUBIC))
        assert pixels.shape == image.shape
        assert np.abs(pixels.astype(float) - image).mean() < 6  # JPEG at quality 90


def test_manifest_lists_bad_files_with_reasons_and_describes_the_file(folder, converted):
    dst, manifest = converted
    skipped = {Path(s["path"]).name: s["reason"] for s in manifest.skipped}
    for name in ("zero_byte.jpg", "truncated.jpg", "random_bytes.jpg", "notes.txt", ".DS_Store"):
        assert name in skipped and skipped[name]
    assert not any(n in skipped for n in ("big.jpg", "cmyk.jpg", "gray.jpg", "dot.jpg"))
    shard = manifest.shards[0]
    assert shard["name"] == "train.beton" and shard["count"] == manifest.num_samples
    assert shard["sha256_blocks"] == block_digest(str(dst / "train.beton"), shard["block_size"])
    assert shard["block_size"] == Reader(str(dst / "train.beton")).page_size
    assert shard["bytes"] == (dst / "train.beton").stat().st_size
    assert Manifest.load(dst / "manifest.json") == manifest
    assert sorted(p.name for p in dst.iterdir()) == ["manifest.json", "train.beton"]


def test_converting_again_is_a_no_op(folder, converted):
    dst, manifest = converted
    before = (dst / "train.beton").stat().st_mtime_ns
    assert beton.convert(_cfg(folder, dst)) == manifest
    assert (dst / "train.beton").stat().st_mtime_ns == before


def test_raw_mode_stores_exact_pixels(folder, tmp_path):
    beton.convert(_cfg(folder, tmp_path, write_mode="raw", max_side=512))
    for (pixels, label, mode), (image, want) in zip(read_beton(tmp_path / "train.beton"),
                                                    originals(folder)):
        assert mode == 1 and label == want and np.array_equal(pixels, image)


def test_proportion_mode_mixes_jpeg_and_raw(folder, tmp_path):
    """The mode of input i is drawn from a generator seeded by i: the same every run."""
    modes = []
    for run in ("a", "b"):
        beton.convert(_cfg(folder, tmp_path / run, write_mode="proportion",
                           compress_probability=0.5))
        modes.append([mode for _, _, mode in read_beton(tmp_path / run / "train.beton")])
    assert set(modes[0]) == {0, 1} and modes[0] == modes[1]


def test_interrupted_conversion_leaves_nothing_a_reader_accepts(folder, converted, tmp_path,
                                                               monkeypatch):
    from pipelines.ffcv_backend.source import open_beton

    dst = tmp_path / "dst"
    beton.convert(_cfg(folder, dst))
    real_write = beton.write_beton

    def crash(*args):
        real_write(*args)
        raise KeyboardInterrupt  # killed after the writer, before the rename

    monkeypatch.setattr(beton, "write_beton", crash)
    with pytest.raises(KeyboardInterrupt):
        beton.convert(_cfg(folder, dst, jpeg_quality=80))
    with pytest.raises(DatasetError):
        open_beton(dst)
    monkeypatch.setattr(beton, "write_beton", real_write)
    manifest = beton.convert(_cfg(folder, dst, jpeg_quality=80))
    assert manifest.num_samples == converted[1].num_samples
    assert open_beton(dst).path == dst / "train.beton"


def test_a_file_failing_in_a_worker_is_skipped_with_its_reason(folder, converted, tmp_path,
                                                              monkeypatch):
    """One pass: a file that vanishes or breaks while converting costs only itself."""
    victim = scan_image_folder(folder, verify=True).samples[5][0]  # a good image
    real = prepare.prepare_image

    def flaky(path, *args, **kwargs):
        if path == victim:
            raise OSError(5, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_image", flaky)  # forked workers inherit it
    manifest = beton.convert(_cfg(folder, tmp_path))
    assert manifest.num_samples == converted[1].num_samples - 1
    assert {"path": victim, "reason": "unreadable (Input/output error)"} in manifest.skipped


def test_refuses_a_folder_holding_another_dataset(folder, converted, tmp_path):
    other = tmp_path / "val"
    write_image_folder(other, 1, 2)
    with pytest.raises(ValueError, match="another converted dataset"):
        beton.convert(_cfg(other, converted[0]))


@pytest.mark.parametrize("field,value", [("write_mode", "smart"), ("compress_probability", 2.0),
                                         ("jpeg_quality", 0), ("max_side", 4)])
def test_bad_options_name_the_field(folder, tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        beton.convert(_cfg(folder, tmp_path, **{field: value}))


def test_command_line(folder, tmp_path, capsys):
    code = convert_main(["--format", "ffcv", str(folder), str(tmp_path), "--max-side", "48",
                         "--workers", "1", "--no-progress", "--strict"])
    out, err = capsys.readouterr()
    assert code == 1  # --strict and files were skipped
    assert "wrote 17 images in 3 classes" in out and "truncated.jpg" in err
