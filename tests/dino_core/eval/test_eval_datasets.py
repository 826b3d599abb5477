"""open_eval_splits reads ImageNet's val layout directly: a flat folder of images with
LOC_val_solution.csv (or a filename,class CSV) next to it, labelled with train's classes."""
import pytest

from dino_core.eval.datasets import open_eval_splits
from pipelines.folder import DatasetError
from tests.pipelines.images import photo_crop


@pytest.fixture()
def root(tmp_path):
    for c in ("n01", "n02"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(2):
            photo_crop((24, 24)).save(tmp_path / "train" / c / f"{i}.JPEG", format="JPEG")
    (tmp_path / "val").mkdir()
    for i in range(3):
        photo_crop((24, 24)).save(tmp_path / "val" / f"v{i}.JPEG", format="JPEG")
    return tmp_path


def test_flat_val_with_loc_val_solution(root):
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nv0,n02 1 2 3 4\nv1,n01 1 2 3 4\nv2,n02 0 0 1 1\n")
    train, val, classes = open_eval_splits(root)
    assert classes == ["n01", "n02"] and val.classes == classes
    assert val.targets == [1, 0, 1]
    x, y = val[0]
    assert tuple(x.shape) == (3, 224, 224) and y == 1


def test_flat_val_csv_inside_the_folder_and_unknown_class(root):
    (root / "val" / "val.csv").write_text("v0.JPEG,n01\nv1.JPEG,n01\nv2.JPEG,n07\n")
    with pytest.raises(DatasetError, match="n07"):
        open_eval_splits(root)


def test_flat_val_without_labels_file_is_a_clear_error(root):
    with pytest.raises(DatasetError, match="no labels file"):
        open_eval_splits(root)
