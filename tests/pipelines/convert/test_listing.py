"""The compact input listing: the same inputs, order, labels and skipped lines as the folder
scan's list of tuples (odd names included), and a size that grows by a fixed number of bytes
per image with no Python object per image."""
import gc
import os
from array import array
from pathlib import Path

import pytest

from pipelines.convert.common import ConvertConfig
from pipelines.convert.listing import Listing, ListingBuilder, append_widening
from pipelines.convert.sources import label_counts, list_inputs
from pipelines.folder import scan_image_folder

ODD_NAMES = ["plain.jpg", "with space.JPEG", "ünïcödé ñame.jpg", "日本語.png", "a,b;c'd.jpg",
             "#hash%20.jpeg", ".hidden.jpg", "x.tar.jpg"]


@pytest.fixture()
def odd_folder(tmp_path):
    """Three classes (one empty, one with a subfolder) of non-empty files with odd names,
    an undecodable byte name, and files the scan skips (not an image, zero bytes)."""
    root = tmp_path / "odd root"
    for c in ("b class", "a_class", "ç-empty"):
        (root / c).mkdir(parents=True)
    for name in ODD_NAMES:
        (root / "a_class" / name).write_bytes(b"x")
        (root / "b class" / name).write_bytes(b"y")
    (root / "b class" / "sub dir").mkdir()
    (root / "b class" / "sub dir" / "deep é.jpg").write_bytes(b"z")
    (root / "a_class" / "notes.txt").write_text("not an image")
    (root / "a_class" / "zero.jpg").write_bytes(b"")
    with open(os.path.join(os.fsencode(root / "b class"), b"bad\xff\xfe.jpg"), "wb") as f:
        f.write(b"w")  # a name that is not UTF-8: round-trips through surrogate escapes
    return root


@pytest.mark.parametrize("unlabeled", [False, True])
def test_same_inputs_order_labels_and_skips_as_the_list_scan(odd_folder, unlabeled):
    plain = scan_image_folder(odd_folder, unlabeled=unlabeled)
    builder = ListingBuilder()
    compact = scan_image_folder(odd_folder, unlabeled=unlabeled, samples=builder)
    listing = builder.build()
    assert len(plain.samples) == len(listing) == 2 * len(ODD_NAMES) + 2
    assert list(listing) == plain.samples
    assert [listing[i] for i in range(len(listing))] == plain.samples
    assert listing[-1] == plain.samples[-1]
    assert list(listing.items(3, 7)) == plain.samples[3:7]
    assert compact.skipped == plain.skipped and compact.classes == plain.classes
    reasons = [s.reason for s in plain.skipped]
    assert len(reasons) == (2 if unlabeled else 3)  # notes.txt, zero.jpg (+ empty class)
    assert all(Path(p).exists() for p, _ in listing)


def test_list_inputs_with_a_training_class_list_relabels(odd_folder, tmp_path):
    train = tmp_path / "train"
    for c in ("0 first", "a_class", "b class", "ç-empty"):
        (train / c).mkdir(parents=True)
        (train / c / "i.jpg").write_bytes(b"x")
    inputs = list_inputs(ConvertConfig(src=odd_folder, dst=tmp_path / "o", classes_from=train))
    plain = scan_image_folder(odd_folder)
    assert inputs.classes == ["0 first", "a_class", "b class", "ç-empty"]
    assert [(p, y + 1) for p, y in plain.samples] == list(inputs.samples)


def test_bytes_per_image_do_not_grow_with_the_corpus():
    """The listing's per-image buffers cost len(name) + 8 bytes (uint32 end, uint16 folder,
    int16 label) at any size, and building it keeps no Python object per image."""
    def build(n):
        return Listing.from_samples((f"/data/train/n{i % 10:08d}/img_{i:08d}.JPEG", i % 10)
                                    for i in range(n))

    name = len("img_00000000.JPEG")
    small = build(1_000)
    gc.collect()
    before = len(gc.get_objects())
    big = build(20_000)
    gc.collect()
    kept = len(gc.get_objects()) - before
    assert small.nbytes / 1_000 == big.nbytes / 20_000 == name + 8
    assert len(big.dirs) == 10
    assert kept < 100, f"{kept} Python objects kept for 20,000 inputs"


def test_arrays_widen_when_a_value_does_not_fit():
    samples = [(f"d{i}/x.jpg", 40_000 * (i % 2) - 1) for i in range(70_000)]
    listing = Listing.from_samples(samples)
    assert listing.labels.typecode == "i" and listing.dir_of.typecode == "i"
    assert listing[69_999] == ("d69999/x.jpg", 39_999) and listing[2] == ("d2/x.jpg", -1)
    assert append_widening(array("I", [1]), 1 << 40, "q").tolist() == [1, 1 << 40]


def test_label_counts_in_first_appearance_order_less_the_dropped():
    labels = [2, 0, 2, 1, 0, 2]
    assert list(label_counts(labels).items()) == [("2", 3), ("0", 2), ("1", 1)]
    assert label_counts(labels, dropped=[0, 3]) == {"0": 2, "2": 2}
    assert list(label_counts(labels, dropped=[0, 2, 5])) == ["0", "1"]
