"""Stock .beton files, written by FFCV's own ``DatasetWriter`` (no manifest): every
``RGBImageField`` write mode (jpg, raw, smart, proportion) with an ``IntField`` label under
the names the writer gave them, read by the FFCV executor with one decode per image and the
reference's boxes; ``--ffcv-fields``; the full recipe's statistics on a raw-stored file; bad
files as one error naming the file."""
import logging

import numpy as np
import pytest

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from ffcv.fields import IntField, RGBImageField  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

from pipelines.ffcv_backend.source import open_beton  # noqa: E402
from pipelines.folder import DatasetError  # noqa: E402
from pipelines.loader import build_loader  # noqa: E402
from tests.pipelines.ffcv_twins import PLAIN, RECIPE, SEED, stored_images, twin_crops  # noqa: E402
from tests.pipelines.fidelity import (assert_images_close, assert_view_rates,  # noqa: E402
                                      is_gray, to_pixels)

N, CLASSES = 24, 4


class Pictures:
    """An indexed dataset as FFCV's writer takes it: per sample one value per field of
    ``kinds``: "image" (uint8 [H, W, 3], colour gradients with noise, 40-64 px a side,
    deterministic), "label" (i % 4) or "other" ((7 i) % 4)."""

    def __init__(self, kinds: tuple[str, ...], n: int = N):
        self.kinds = kinds
        rng = np.random.default_rng(0)
        self.images = []
        for _ in range(n):
            h, w = (int(x) for x in rng.integers(40, 65, 2))
            y, x = np.mgrid[0:h, 0:w] / max(h, w)
            slope = rng.uniform(-200, 200, (2, 3))
            pixels = (rng.uniform(0, 255, 3) + y[..., None] * slope[0]
                      + x[..., None] * slope[1] + rng.normal(0, 20, (h, w, 3)))
            self.images.append(np.clip(pixels, 0, 255).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        value = {"image": self.images[i], "label": i % CLASSES, "other": (i * 7) % CLASSES}
        return tuple(value[k] for k in self.kinds)


def write_stock(path, fields: dict, kinds: tuple[str, ...], n: int = N):
    """A .beton of ``Pictures(kinds)`` written by FFCV's DatasetWriter (one worker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.random.seed(0)  # "proportion" draws each sample's mode from numpy's global stream
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(Pictures(kinds, n))
    return path


def image_field(mode: str) -> RGBImageField:
    # smart: JPEG when the raw image would exceed 8000 bytes (about half of these images)
    return RGBImageField(write_mode=mode, smart_threshold=8000, compress_probability=0.5)


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    """{mode: path}; fields in the writer's order: an int, the image, another int."""
    root = tmp_path_factory.mktemp("stock")
    return {mode: write_stock(root / mode / "data.beton",
                              {"n": IntField(), "img": image_field(mode), "y": IntField()},
                              ("label", "image", "other"))
            for mode in ("jpg", "raw", "smart", "proportion")}


def modes_of(path) -> np.ndarray:
    from ffcv.reader import Reader
    reader = Reader(str(path))
    return np.asarray(reader.metadata[f"f{reader.field_names.index('img')}"]["mode"])


# jpg and proportion store what raw and smart do (smart: both kinds in one file): their
# loaders (a pipeline compile each, tens of seconds on a busy machine) run with --runslow
@pytest.mark.parametrize("mode", [pytest.param("jpg", marks=pytest.mark.slow), "smart",
                                  pytest.param("proportion", marks=pytest.mark.slow)])
def test_every_write_mode_is_read_with_the_reference_boxes(betons, mode, caplog):
    """No manifest: the first image field and the first int field (smart: the fields
    ``--ffcv-fields`` names), classes from the labels (one log line); each view is the
    compiled resize of the reference's box cut from ONE decode of the stored sample (raw
    samples are not decoded at all)."""
    path = betons[mode]
    modes = modes_of(path)
    if mode == "smart":
        assert set(modes.tolist()) == {0, 1}  # both kinds in one file
    label = "y" if mode == "smart" else "n"
    options = {"fields": "img,y"} if mode == "smart" else {}
    data = path.parent if mode == "proportion" else path  # a folder, or the file
    with caplog.at_level(logging.INFO, logger="pipelines.ffcv_backend.source"):
        loader = build_loader(data, backend="ffcv", batch_size=10, spec=PLAIN,
                              num_workers=1, seed=SEED, shuffle=False, drop_last=False,
                              **options)
    try:
        lines = [r.getMessage() for r in caplog.records if "stock FFCV file" in r.getMessage()]
        assert len(lines) == 1 and "image field 'img'" in lines[0], lines
        assert f"label field '{label}', {CLASSES} classes" in lines[0]
        assert loader.classes == [str(c) for c in range(CLASSES)]
        images, labels = stored_images(path, "img", label)
        index = 0
        loader.set_epoch(1)
        for batch in loader:
            counts = loader.backend.last_decode_counts.tolist()
            assert counts == [1 - int(m) for m in modes[index:index + len(counts)]]
            assert np.array_equal(batch.labels.numpy(), labels[index:index + len(counts)])
            for b in range(len(batch.labels)):
                want = twin_crops(PLAIN, images[index], SEED, 0, 1, index)
                for view, w in zip(batch.views, want):
                    assert_images_close(to_pixels(view[b], PLAIN.mean, PLAIN.std), w,
                                        0.01, 1e-3, 1.0, f"{mode} sample {index}")
                index += 1
        assert index == N
    finally:
        loader.close()


def test_ffcv_fields_names_the_fields_and_the_first_of_each_kind_is_the_default(tmp_path):
    path = write_stock(tmp_path / "two.beton", {"raw": image_field("raw"), "n": IntField(),
                                               "jpg": image_field("jpg"), "y": IntField()},
                       ("image", "label", "image", "other"), n=3)
    first, named = open_beton(tmp_path), open_beton(path, "jpg,y")
    assert (first.image_field, first.label_field, first.converted) == ("raw", "n", False)
    assert (named.image_field, named.label_field) == ("jpg", "y")
    assert named.all_fields == ("raw", "n", "jpg", "y")


def test_full_recipe_statistics_on_a_raw_stored_stock_file(betons):
    """The recipe's grayscale rate per view, read from the output pixels, over 10 epochs of
    a raw-stored stock file: the spec ops run on images never JPEG-coded."""
    loader = build_loader(betons["raw"].parent, backend="ffcv", batch_size=N, spec=RECIPE,
                          num_workers=1, seed=SEED)
    gray = []
    try:
        for epoch in range(10):
            loader.set_epoch(epoch)
            for batch in loader:
                assert loader.backend.last_decode_counts.sum() == 0
                assert np.array_equal(np.sort(batch.labels.numpy()),
                                      np.sort(np.arange(N) % CLASSES))
                gray.append(np.stack(
                    [[is_gray(to_pixels(v[b], RECIPE.mean, RECIPE.std), atol=1.0)
                      for v in batch.views] for b in range(len(batch.labels))]))
    finally:
        loader.close()
    flags = np.concatenate(gray)  # [240, views]
    assert flags.shape == (10 * N, RECIPE.num_views)
    assert_view_rates(flags, [RECIPE.grayscale_p] * RECIPE.num_views, "grayscale")


def test_bad_files_are_one_error_naming_the_file(betons, tmp_path):
    path = write_stock(tmp_path / "labels.beton", {"n": IntField(), "y": IntField()},
                       ("label", "other"), n=3)
    cases = [(path, {}, "labels.beton has no RGBImageField field (the image); the file's "
                        "fields: n (IntField), y (IntField)"),
             (betons["jpg"], {"fields": "image,label"}, "--ffcv-fields names 'image' as the "
                                                        "image"),
             (betons["jpg"], {"fields": "img,nope"}, "'nope' as the label"),
             (betons["jpg"], {"fields": "img"}, "--ffcv-fields must be IMAGE,LABEL")]
    for data, options, message in cases:
        with pytest.raises((DatasetError, ValueError)) as e:
            build_loader(data, backend="ffcv", batch_size=2, **options)
        assert message in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, ValueError)
    cut = tmp_path / "cut.beton"
    cut.write_bytes(betons["jpg"].read_bytes()[:100])
    with pytest.raises(DatasetError, match="cut.beton is not a readable .beton"):
        build_loader(cut, backend="ffcv", batch_size=2)


def test_dino_train_names_the_file_and_the_fields_in_one_line(betons, tmp_path, capsys):
    from dino_core.cli.train import main as train_main
    from tests.dino_core.train.train_helpers import tiny_overrides

    argv = [a for o in tiny_overrides(betons["raw"], tmp_path / "run") for a in ("--set", o)]
    assert train_main(argv + ["--backend", "ffcv", "--ffcv-fields", "img,label"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dino-train: error: ")
    assert "data.beton: --ffcv-fields names 'label' as the label" in err[0]
    assert "n (IntField), img (RGBImageField), y (IntField)" in err[0]


@pytest.mark.slow
def test_dino_train_runs_on_a_stock_beton(betons, tmp_path, capsys):
    from dino_core.cli.train import main as train_main
    from tests.dino_core.train.train_helpers import tiny_overrides

    argv = [a for o in tiny_overrides(betons["smart"], tmp_path / "run", epochs=1, iters=2)
            for a in ("--set", o)]
    assert train_main(argv + ["--backend", "ffcv", "--ffcv-fields", "img,y"]) == 0
    assert "final loss" in capsys.readouterr().out
