"""Inputs of a conversion: ImageNet's val layout (flat folder + labels file, labelled with
the training split's classes) and unlabeled folders, with every bad row reported."""
import json
from pathlib import Path

import pytest

from pipelines.convert import wds
from pipelines.convert.cli import main as convert_main
from pipelines.convert.common import ConvertConfig
from pipelines.formats.manifest import Manifest
from pipelines.convert.sources import list_inputs
from pipelines.folder import DatasetError
from tests.pipelines.images import photo_crop, write_image_folder

TRAIN_CLASSES = ["n01", "n02", "n03"]


@pytest.fixture()
def imagenet(tmp_path):
    """train/<class>/ for 3 classes; val/ flat with LOC_val_solution.csv and a plain CSV."""
    train = tmp_path / "train"
    for c in TRAIN_CLASSES:
        (train / c).mkdir(parents=True)
        photo_crop((32, 24)).save(train / c / "a.JPEG", format="JPEG")
    val = tmp_path / "val"
    val.mkdir()
    for i in range(5):
        photo_crop((32, 24)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000000,n03 1 2 3 4 n03 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n01 1 2 3 4\n"
        "ILSVRC2012_val_00000002,n02 1 2 3 4\n"
        "ILSVRC2012_val_00000003,n03 1 2 3 4\n"
        "ILSVRC2012_val_00000009,n01 1 2 3 4\n")  # no such file; _00000004 has no row
    (tmp_path / "val.csv").write_text("filename,class\nILSVRC2012_val_00000000.JPEG,n02\n"
                                      "ILSVRC2012_val_00000001.JPEG,n03\n")
    return tmp_path


def _cfg(root: Path, labels: str, **kw) -> ConvertConfig:
    return ConvertConfig(src=root / "val", dst=root / "out", labels=root / labels,
                         classes_from=root / "train", progress=False, workers=1, **kw)


def test_loc_val_solution_uses_the_training_splits_indices(imagenet):
    inputs = list_inputs(_cfg(imagenet, "LOC_val_solution.csv"))
    assert inputs.classes == TRAIN_CLASSES
    got = {Path(p).name: y for p, y in inputs.samples}
    assert got == {"ILSVRC2012_val_00000000.JPEG": 2, "ILSVRC2012_val_00000001.JPEG": 0,
                   "ILSVRC2012_val_00000002.JPEG": 1, "ILSVRC2012_val_00000003.JPEG": 2}
    reasons = {Path(s["path"]).name: s["reason"] for s in inputs.skipped}
    assert "missing from" in reasons["ILSVRC2012_val_00000009"]
    assert reasons["ILSVRC2012_val_00000004.JPEG"] == "no row in the labels file"


def test_plain_csv_with_file_names(imagenet):
    inputs = list_inputs(_cfg(imagenet, "val.csv"))
    assert sorted(y for _, y in inputs.samples) == [1, 2]


def test_a_class_unknown_to_the_training_split_is_an_error_naming_it(imagenet):
    with open(imagenet / "val.csv", "a") as f:
        f.write("ILSVRC2012_val_00000002.JPEG,n99\nILSVRC2012_val_00000003.JPEG,n42\n")
    with pytest.raises(DatasetError, match="2 class.*n42, n99"):
        list_inputs(_cfg(imagenet, "val.csv"))
    status = convert_main([str(imagenet / "val"), str(imagenet / "o"), "--labels",
                           str(imagenet / "val.csv"), "--classes-from", str(imagenet / "train"),
                           "--no-progress"])
    assert status == 2


def test_classes_from_a_converted_manifest_and_end_to_end(imagenet):
    train_out = imagenet / "train-wds"
    wds.convert(ConvertConfig(src=imagenet / "train", dst=train_out, progress=False, workers=1))
    status = convert_main([str(imagenet / "val"), str(imagenet / "val-wds"), "--labels",
                           str(imagenet / "LOC_val_solution.csv"), "--classes-from",
                           str(train_out), "--no-progress", "--workers", "1"])
    assert status == 0
    m = Manifest.load(imagenet / "val-wds" / "manifest.json")
    assert m.classes == TRAIN_CLASSES and m.num_samples == 4
    assert m.label_counts == {"0": 1, "1": 1, "2": 2}


def test_malformed_labels_row_names_file_and_line(imagenet):
    (imagenet / "bad.csv").write_text("a.JPEG,n01\njust-one-column\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2"):
        list_inputs(_cfg(imagenet, "bad.csv"))


@pytest.mark.parametrize("forced", [False, True])
def test_unlabeled_folder_any_nesting(tmp_path, forced):
    root = tmp_path / "photos"
    (root / "2024" / "june").mkdir(parents=True)
    (root / "misc").mkdir()
    photo_crop((30, 20)).save(root / "2024" / "june" / "x.jpg")
    photo_crop((30, 20)).save(root / "misc" / "y.png")
    (root / "misc" / "notes.txt").write_text("hi")
    if not forced:  # auto-detection needs an image directly in the root
        photo_crop((30, 20)).save(root / "z.jpg")
    cfg = ConvertConfig(src=root, dst=tmp_path / "o", unlabeled=True if forced else None,
                        progress=False, workers=1)
    inputs = list_inputs(cfg)
    assert not inputs.labelled and inputs.classes == []
    assert {y for _, y in inputs.samples} == {-1}
    assert len(inputs.samples) == (2 if forced else 3)
    assert [Path(s["path"]).name for s in inputs.skipped] == ["notes.txt"]
    m = wds.convert(cfg)
    saved = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert saved["labelled"] is False and saved["classes"] == [] and m.label_counts == {
        "-1": len(inputs.samples)}


def test_class_folders_are_not_taken_for_unlabeled(tmp_path):
    root = write_image_folder(tmp_path / "train", num_classes=2, per_class=2)
    inputs = list_inputs(ConvertConfig(src=root, dst=tmp_path / "o"))
    assert inputs.labelled and len(inputs.classes) == 2
