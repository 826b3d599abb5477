"""dino-bench convert --images: the replicated corpus, the rows against the base size and
the ImageNet projection's arithmetic, on a tiny folder. Asserts no timing."""
import subprocess
import sys

import pytest

from benchmarks import cli
from benchmarks.data.convert_process import tree_memory
from benchmarks.data.convert_scale import (IMAGENET_TRAIN, ScaleConfig, measure_scale,
                                           projection, replicate)
from benchmarks.data.pipeline import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=3,
                             size=(96, 72))


def test_replicate_names_and_bytes(folder, tmp_path):
    out = replicate(folder, tmp_path / "r", 14)
    files = sorted(out.rglob("*.*"))
    assert len(files) == 14 and len({f.relative_to(out) for f in files}) == 14
    assert {f.parent.name for f in files} == {p.name for p in folder.iterdir()}
    first = sorted(folder.rglob("*.*"))[0]
    copy = out / first.parent.name / f"0002_{first.name}"  # the third pass over 6 files
    assert copy.read_bytes() == first.read_bytes()


def test_rows_against_the_base_size(folder, tmp_path):
    cfg = ScaleConfig(images=12, base=6, workers=2, formats=("wds",), max_side=64,
                      scratch=str(tmp_path))
    rows = measure_scale(folder, cfg, log=lambda *_: None)
    assert [(r["images"], r["workers"]) for r in rows] == [(6, 1), (6, 2), (12, 2)]
    assert rows[1]["rate_vs_base"] == 1.0 and rows[1]["memory_vs_base"] == 1.0
    big = rows[2]
    assert big["rate_vs_base"] == pytest.approx(big["images_per_s"] / rows[1]["images_per_s"],
                                                rel=0.01)
    assert all(r["peak_mb"] > 10 and r["output_mb"] > 0 for r in rows)
    # the converter's own CPU per image: the process and its reaped workers, never zero
    assert all(r["cpu_ms_per_image"] > 0 for r in rows) and rows[1]["cpu_vs_base"] == 1.0
    assert big["cpu_vs_base"] == pytest.approx(
        big["cpu_ms_per_image"] / rows[1]["cpu_ms_per_image"], rel=0.01)
    assert all(r["peak_rss_mb"] >= r["peak_mb"] and r["memory"] in ("pss", "rss")
               for r in rows)
    assert list(tmp_path.iterdir()) == []  # inputs and outputs removed


def test_projection_arithmetic():
    cfg = ScaleConfig(images=100, base=10, workers=2, formats=("ffcv",))
    rows = [{"format": "ffcv", "images": 10, "workers": 1, "images_per_core_s": 1000.0},
            {"format": "ffcv", "images": 100, "workers": 2, "images_per_core_s": 800.0,
             "output_mb": 10.0}]
    p16, p64 = projection(rows, cfg)
    assert p16["efficiency_per_doubling"] == 0.8
    assert p16["hours_flat"] == pytest.approx(IMAGENET_TRAIN / (800 * 16) / 3600, abs=1e-3)
    # 16 cores are 3 doublings beyond 2 workers: 0.8 ** 3 of the per-core rate
    assert p16["hours_compound"] == pytest.approx(p16["hours_flat"] / 0.8 ** 3, abs=1e-3)
    assert p64["storage_mb_s"] == pytest.approx(800 * 64 * 0.1)


def test_images_below_base_is_refused():
    with pytest.raises(ValueError, match="base size"):
        ScaleConfig(images=5, base=10)


def test_cli_scale_mode_writes_results(folder, tmp_path):
    rc = cli.main(["convert", "--device", "cpu", "--no-tensorboard", "--data", str(folder),
                   "--images", "8", "--scale-base", "6", "--workers", "1", "--max-side", "64",
                   "--output-dir", str(tmp_path)])
    assert rc == 0
    (md,) = tmp_path.glob("*_convert_scale.md")
    text = md.read_text()
    assert "dino-bench convert" in text and "--images 8" in text and "ImageNet-1k" in text


def test_tree_memory_counts_a_page_shared_with_a_forked_child_once():
    """20 MB written before a fork are resident in both processes: summed RSS counts them
    twice, summed PSS (the scale check's peak_mb) once."""
    psutil = pytest.importorskip("psutil")
    code = ("import os, sys, time\nb = b'x' * 20_000_000\nif os.fork():\n"
            "    print('forked', flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "forked"
        proc = psutil.Process(parent.pid)
        pss, rss, exact = tree_memory(proc)
        if not exact:
            pytest.skip("no PSS on this system")
        assert len(proc.children()) == 1
        assert pss > 20e6 and rss - pss > 15e6, (pss, rss)
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()
