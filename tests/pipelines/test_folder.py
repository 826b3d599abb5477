"""ImageFolder scanning: classes, labels, and every bad-file case reported, never fatal."""
import os

import pytest
from PIL import Image

from pipelines.folder import DatasetError, check_image, scan_image_folder
from tests.pipelines.images import photo_crop, write_bad_files, write_image_folder


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "data", num_classes=3, per_class=3)


def test_classes_sorted_and_labels_follow_them(folder):
    scan = scan_image_folder(folder)
    assert scan.classes == sorted(p.name for p in folder.iterdir())
    assert len(scan.samples) == 9 and scan.skipped == []
    for path, label in scan.samples:
        assert os.path.basename(os.path.dirname(path)) == scan.classes[label]
    assert scan.class_to_idx == {c: i for i, c in enumerate(scan.classes)}


def test_bad_files_are_skipped_with_reasons(folder):
    cls = sorted(p.name for p in folder.iterdir())[0]
    write_bad_files(folder / cls)
    scan = scan_image_folder(folder)  # no decoding: only names and sizes are checked
    reasons = {os.path.basename(s.path): s.reason for s in scan.skipped}
    assert "extension" in reasons["notes.txt"] and "extension" in reasons[".DS_Store"]
    assert reasons["zero_byte.jpg"] == "zero-byte file"
    assert len(scan.samples) == 9 + 2  # truncated + random bytes pass a scan without verify
    verified = scan_image_folder(folder, verify=True)
    reasons = {os.path.basename(s.path): s.reason for s in verified.skipped}
    assert "decodable" in reasons["truncated.jpg"] and "decodable" in reasons["random_bytes.jpg"]
    assert len(verified.samples) == 9
    assert all(str(s).startswith("skipped ") for s in verified.skipped)


def test_empty_class_folder_is_reported_and_keeps_its_label(folder):
    (folder / "aaa_empty").mkdir()
    scan = scan_image_folder(folder)
    assert scan.classes[0] == "aaa_empty"
    assert any(s.path.endswith("aaa_empty") and "empty class" in s.reason for s in scan.skipped)
    assert len(scan.samples) == 9 and min(label for _, label in scan.samples) == 1


def test_symlink_loop_is_reported_not_followed_forever(folder):
    cls = sorted(p.name for p in folder.iterdir())[0]
    os.symlink(folder / cls, folder / cls / "loop")
    scan = scan_image_folder(folder)
    assert any("symlink loop" in s.reason for s in scan.skipped)
    assert len(scan.samples) == 9


def test_hidden_folders_are_not_classes(folder):
    (folder / ".cache").mkdir()
    photo_crop((16, 16)).save(folder / ".cache" / "x.jpg")
    assert ".cache" not in scan_image_folder(folder).classes


def test_unusual_but_valid_images_pass_verification(tmp_path):
    d = tmp_path / "data" / "odd"
    d.mkdir(parents=True)
    img = photo_crop((24, 20))
    img.convert("L").save(d / "gray.jpg")
    img.convert("CMYK").save(d / "cmyk.jpg")
    img.save(d / "really_png.jpg", format="PNG")  # wrong extension, still an image
    Image.new("RGB", (1, 1), (9, 9, 9)).save(d / "one_pixel.png")
    scan = scan_image_folder(tmp_path / "data", verify=True)
    assert len(scan.samples) == 4 and scan.skipped == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission bits")
def test_unreadable_file_is_skipped(folder):
    cls = sorted(p.name for p in folder.iterdir())[0]
    locked = folder / cls / "locked.jpg"
    photo_crop((16, 16)).save(locked)
    locked.chmod(0)
    scan = scan_image_folder(folder)
    assert any(s.path == str(locked) and "permission" in s.reason for s in scan.skipped)


def test_check_image_reasons(tmp_path):
    for name in write_bad_files(tmp_path):  # every one of them, image extension or not
        assert check_image(tmp_path / name) is not None, name
    assert "zero-byte" in check_image(tmp_path / "zero_byte.jpg")
    good = tmp_path / "good.jpg"
    photo_crop((16, 16)).save(good)
    assert check_image(good) is None


def test_unusable_roots_raise_dataset_error_naming_the_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*nowhere"):
        scan_image_folder(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        scan_image_folder(f)
    (tmp_path / "flat").mkdir()
    photo_crop((16, 16)).save(tmp_path / "flat" / "img.jpg")
    with pytest.raises(DatasetError, match="no class folders"):
        scan_image_folder(tmp_path / "flat", unlabeled=False)
    flat = scan_image_folder(tmp_path / "flat")  # auto-detected: an unlabeled folder
    assert not flat.labelled and flat.samples == [(str(tmp_path / "flat" / "img.jpg"), -1)]
    (tmp_path / "junk" / "cls").mkdir(parents=True)
    (tmp_path / "junk" / "cls" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no usable images"):
        scan_image_folder(tmp_path / "junk")
