"""The embedded default dataset: builds offline, once, atomically, with a disjoint split."""
import hashlib
import json

import pytest
from PIL import Image

from pipelines import embedded
from pipelines.folder import scan_image_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    parent = tmp_path_factory.mktemp("cache")
    return parent, embedded.default_dataset(parent)


def test_layout_classes_and_counts(built):
    parent, root = built
    assert root == parent / embedded.NAME
    train, val = scan_image_folder(root / "train", verify=True), scan_image_folder(root / "val")
    assert len(train.classes) >= 10 and train.classes == val.classes
    assert train.skipped == [] and val.skipped == []
    counts = embedded.count_images(root)
    assert set(counts["train"].values()) == {embedded.TRAIN_PER_CLASS}
    assert set(counts["val"].values()) == {embedded.VAL_PER_CLASS}
    with Image.open(train.samples[0][0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        assert embedded.OUT_LONG_SIDE[0] <= max(im.size) <= embedded.OUT_LONG_SIDE[1]


def test_train_and_val_come_from_disjoint_regions(built):
    _, root = built
    manifest = json.loads((root / "manifest.json").read_text())
    by_class: dict = {}
    for s in manifest["samples"]:
        by_class.setdefault(s["class"], {"train": [], "val": []})[s["split"]].append(s["box"])
    assert sorted(by_class) == sorted(manifest["classes"])
    for cls, boxes in by_class.items():
        for a in boxes["train"]:
            for b in boxes["val"]:
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0, (cls, a, b)
    digests = {split: {hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in (root / split).rglob("*.jpg")} for split in ("train", "val")}
    assert not digests["train"] & digests["val"]


def test_second_call_reuses_the_cache(built, monkeypatch):
    parent, root = built
    stamp = (root / "VERSION").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached dataset")
    monkeypatch.setattr(embedded, "_build_into", no_rebuild)
    assert embedded.default_dataset(parent) == root
    monkeypatch.setenv("DINO_FAST_CACHE", str(parent))
    assert embedded.default_dataset() == root
    assert (root / "VERSION").stat().st_mtime_ns == stamp
    assert not [p for p in parent.iterdir() if p.name != embedded.NAME]  # no temp dirs left


def test_split_regions_are_disjoint_and_cover():
    for w, h in [(640, 427), (300, 451), (512, 512)]:
        (l1, t1, r1, b1), (l2, t2, r2, b2) = embedded.split_regions(w, h)
        assert (l1, t1) == (0, 0) and (r2, b2) == (w, h)
        assert (r1 == l2 and b1 == b2 == h) or (b1 == t2 and r1 == r2 == w)


@pytest.fixture
def small_build(monkeypatch):
    """Two crops per split and class: the same code path, a fraction of the time."""
    monkeypatch.setattr(embedded, "TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(embedded, "VAL_PER_CLASS", 1)


def digest_tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_across_builds(tmp_path, small_build):
    a = embedded.default_dataset(tmp_path / "a")
    b = embedded.default_dataset(tmp_path / "b")
    assert digest_tree(a) == digest_tree(b)


def test_partial_or_stale_dataset_is_rebuilt(tmp_path, small_build):
    stale = tmp_path / embedded.NAME
    (stale / "train" / "junk").mkdir(parents=True)  # an unfinished copy: no VERSION
    root = embedded.default_dataset(tmp_path)
    assert not (root / "train" / "junk").exists() and (root / "VERSION").is_file()
    (root / "VERSION").write_text("embedded-v0\n")  # an older version
    root = embedded.default_dataset(tmp_path)
    assert (root / "VERSION").read_text().startswith(embedded.NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == [embedded.NAME]


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(root, sources):
        (root / "train").mkdir()
        raise OSError("disk full")
    monkeypatch.setattr(embedded, "_build_into", crash)
    with pytest.raises(OSError, match="disk full"):
        embedded.default_dataset(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_prints_path_and_counts(built, capsys):
    parent, root = built
    embedded.main(["--cache-dir", str(parent)])
    out = capsys.readouterr().out.splitlines()
    counts = embedded.count_images(root)
    assert out[0] == str(root)
    assert out[1].startswith(f"train: {sum(counts['train'].values())} images in "
                             f"{len(counts['train'])} classes")
    assert out[2].startswith(f"val: {sum(counts['val'].values())} images")
