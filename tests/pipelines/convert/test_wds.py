"""dino-convert --format wds: tar shards, DALI index files, manifest, resume, bad files."""
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.convert import wds
from pipelines.convert.cli import main as convert_main
from pipelines.convert.common import ConvertConfig
from pipelines.formats import wds_index
from pipelines.formats.manifest import Manifest
from pipelines.folder import scan_image_folder
from tests.pipelines.images import write_bad_files, write_image_folder


@pytest.fixture
def folder(tmp_path):
    root = write_image_folder(tmp_path / "src", num_classes=3, per_class=4)
    # one oversized PNG (re-encoded and shrunk) and one grayscale JPEG (converted to RGB)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    big.save(sorted(root.iterdir())[1] / "zz_big.png")
    Image.new("L", (40, 30), 128).save(sorted(root.iterdir())[2] / "zz_gray.jpg")
    return root


def _cfg(src, dst, **kw):
    kw = {"shard_size": 5, "workers": 1, "progress": False, "max_side": 64, **kw}
    return ConvertConfig(src=Path(src), dst=Path(dst), **kw)


def _tar_samples(path):
    """{key: (jpeg bytes, label)} of one shard, read without extracting."""
    out = {}
    with tarfile.open(path) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    for name, data in members.items():
        key, ext = name.split(".", 1)
        if ext == "jpg":
            out[key] = (data, int(members[f"{key}.cls"].decode()))
    return out


def _all_samples(dst):
    m = Manifest.load(dst / "manifest.json")
    out = {}
    for shard in m.shards:
        out.update(_tar_samples(dst / shard["name"]))
    return m, out


def test_round_trip_every_good_image_with_its_label(folder, tmp_path):
    bad = write_bad_files(sorted(folder.iterdir())[0])
    dst = tmp_path / "wds"
    manifest = wds.convert(_cfg(folder, dst))
    scan = scan_image_folder(folder)
    m, samples = _all_samples(dst)
    assert m.classes == scan.classes and m.format == "wds"
    good = [(p, lab) for p, lab in scan.samples if Path(p).name not in bad]
    assert manifest.num_samples == len(samples) == len(good) == 14
    for i, (path, label) in enumerate(scan.samples):
        key = wds.sample_key(i)
        if Path(path).name in bad:
            assert key not in samples
            continue
        data, got_label = samples[key]
        assert got_label == label, path
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 64
        src = Image.open(path)
        if src.format == "JPEG" and src.mode == "RGB":
            assert data == Path(path).read_bytes()  # small RGB JPEGs pass through untouched
    skipped = {Path(s["path"]).name: s["reason"] for s in m.skipped}
    assert set(bad) <= set(skipped)
    assert "zero-byte" in skipped["zero_byte.jpg"]
    assert "decodable" in skipped["truncated.jpg"] and "decodable" in skipped["random_bytes.jpg"]
    assert sum(s["count"] for s in m.shards) == m.num_samples


def test_manifest_checksums_and_index_offsets_point_at_member_data(folder, tmp_path):
    dst = tmp_path / "wds"
    m = wds.convert(_cfg(folder, dst))
    for shard in m.shards:
        tar = dst / shard["name"]
        raw = tar.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == shard["sha256"]
        assert len(raw) == shard["bytes"]
        entries = wds_index.parse_index(dst / shard["index"])
        assert len(entries) == shard["count"]
        members = _tar_samples(tar)
        for sample in entries:
            jpg, cls = sample
            assert (jpg.ext, cls.ext) == ("jpg", "cls") and jpg.name.split(".")[0] in members
            data, label = members[jpg.name.split(".")[0]]
            assert raw[jpg.offset:jpg.offset + jpg.size] == data
            assert int(raw[cls.offset:cls.offset + cls.size]) == label


@pytest.mark.dali
def test_index_is_byte_identical_to_dalis_wds2idx(folder, tmp_path):
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool is not installed")
    dst = tmp_path / "wds"
    m = wds.convert(_cfg(folder, dst))
    for shard in m.shards:
        theirs = tmp_path / f"{shard['name']}.dali.idx"
        with wds2idx.IndexCreator(str(dst / shard["name"]), str(theirs), verbose=False) as ic:
            ic.create_index()
        assert (dst / shard["index"]).read_text() == theirs.read_text()


@pytest.mark.dali
def test_dalis_webdataset_reader_accepts_shards_and_indexes(folder, tmp_path):
    from nvidia.dali import fn, pipeline_def

    dst = tmp_path / "wds"
    m = wds.convert(_cfg(folder, dst))
    tars = [str(dst / s["name"]) for s in m.shards]
    idxs = [str(dst / s["index"]) for s in m.shards]

    @pipeline_def(batch_size=m.num_samples, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"],
                                         missing_component_behavior="error")
        return jpg, cls

    p = pipe()
    p.build()
    jpg, cls = p.run()
    _, samples = _all_samples(dst)
    got = sorted((bytes(np.array(jpg[i])), int(bytes(np.array(cls[i]))))
                 for i in range(m.num_samples))
    assert got == sorted(samples.values())


def test_parallel_workers_write_identical_shards(folder, tmp_path):
    one = wds.convert(_cfg(folder, tmp_path / "one", workers=1))
    two = wds.convert(_cfg(folder, tmp_path / "two", workers=2))
    assert [s["sha256"] for s in one.shards] == [s["sha256"] for s in two.shards]


def test_interrupted_conversion_resumes_without_redoing_finished_shards(folder, tmp_path,
                                                                       monkeypatch):
    """Shards are written by worker processes (forked: they inherit the patch); the calls
    they make are logged to a file, since their memory is their own."""
    from pipelines.convert import prepare

    dst, log = tmp_path / "wds", tmp_path / "calls.txt"
    inputs = [p for p, _ in wds.list_inputs(_cfg(folder, dst)).samples]
    real = prepare.prepare_image
    stop = {inputs[7]}  # in the middle of the second shard (shard_size 5)

    def interrupted(path, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{inputs.index(path)}\n")
        if path in stop:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_image", interrupted)
    with pytest.raises(RuntimeError, match="KeyboardInterrupt"):
        wds.convert(_cfg(folder, dst, workers=1))
    # nothing a reader accepts as complete: no manifest, no partial shard, no temp files
    assert not (dst / "manifest.json").exists()
    assert sorted(p.name for p in dst.iterdir()) == ["000000.idx", "000000.shard.json",
                                                      "000000.tar"]
    from pipelines.dali_backend.readers import open_dataset
    from pipelines.folder import DatasetError
    with pytest.raises(DatasetError, match="did not finish"):
        open_dataset(dst)
    first = (dst / "000000.tar").stat().st_mtime_ns

    log.unlink()
    stop.clear()
    resumed = wds.convert(_cfg(folder, dst))
    calls = [int(line) for line in log.read_text().split()]
    assert min(calls) == 5  # shard 0 (inputs 0..4) was not encoded again
    assert (dst / "000000.tar").stat().st_mtime_ns == first
    fresh = wds.convert(_cfg(folder, tmp_path / "fresh"))
    assert [s["sha256"] for s in resumed.shards] == [s["sha256"] for s in fresh.shards]
    assert resumed.skipped == fresh.skipped and resumed.num_samples == fresh.num_samples
    assert not any("conversion failed" in s["reason"] for s in resumed.skipped)


def test_changed_options_redo_shards_and_stale_shards_go(folder, tmp_path):
    dst = tmp_path / "wds"
    small = wds.convert(_cfg(folder, dst, shard_size=3))
    assert len(small.shards) == 5
    bigger = wds.convert(_cfg(folder, dst, shard_size=7, jpeg_quality=70))
    assert len(bigger.shards) == 2
    names = sorted(p.name for p in dst.iterdir() if p.suffix == ".tar")
    assert names == ["000000.tar", "000001.tar"]
    marker = json.loads((dst / "000001.shard.json").read_text())
    assert marker["count"] == 7 and marker["sha256"] == bigger.shards[1]["sha256"]


def test_cli_converts_and_reports_skipped_files(folder, tmp_path, capsys):
    write_bad_files(sorted(folder.iterdir())[0])
    dst = tmp_path / "wds"
    rc = convert_main(["--format", "wds", str(folder), str(dst), "--shard-size", "4",
                       "--workers", "1", "--no-progress", "--max-side", "64", "--strict"])
    out = capsys.readouterr()
    assert rc == 1  # --strict and files were skipped
    assert "wrote 14 images in 3 classes" in out.out
    assert "skipped" in out.err and "truncated.jpg" in out.err
    assert Manifest.load(dst / "manifest.json").options["shard_size"] == 4


def test_label_counts_leave_out_what_a_shard_skipped_also_when_resumed(folder, tmp_path):
    """A file the scan accepts but the converter cannot read: its label is not counted,
    whether its shard was written now or kept from an earlier run (read from .shard.json)."""
    src = tmp_path / "src2"
    shutil.copytree(folder, src)
    junk_class = sorted(src.iterdir())[0]
    (junk_class / "aa_junk.jpg").write_bytes(b"not a jpeg" * 10)
    scan = [y for _, y in wds.list_inputs(_cfg(src, tmp_path / "x")).samples]
    want = {str(y): scan.count(y) - (y == 0) for y in sorted(set(scan))}
    first = wds.convert(_cfg(src, tmp_path / "wds"))
    again = wds.convert(_cfg(src, tmp_path / "wds"))  # every shard kept
    assert [Path(s["path"]).name for s in first.skipped] == ["aa_junk.jpg"]
    assert first.label_counts == again.label_counts == want
