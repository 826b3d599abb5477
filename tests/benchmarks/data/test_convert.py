"""dino-bench convert on a tiny folder: every converter runs, ratios are computed against
the FFCV writer of the same worker count, files are written. Asserts no timing."""
import json

import pytest

pytest.importorskip("ffcv", reason="ffcv is not installed")

from benchmarks import cli  # noqa: E402
from benchmarks.data.convert import CONVERTERS, ConvertBenchConfig, measure, summary  # noqa: E402
from benchmarks.data.pipeline import make_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=5,
                             size=(96, 72))


def test_rows_and_ratios(folder, tmp_path):
    cfg = ConvertBenchConfig(workers=(1, 2), max_side=64, verify=False, scratch=str(tmp_path),
                             whole_process=False)
    rows = measure(folder, cfg, log=lambda *_: None)
    assert [(r["converter"], r["workers"]) for r in rows] == [
        (c, w) for c in CONVERTERS for w in (1, 2)]
    by = {(r["converter"], r["workers"]): r for r in rows}
    for r in rows:
        assert r["images"] == 10
        base = by[("ffcv-writer", r["workers"])]["images_per_s"]
        assert r["speedup_per_core"] == pytest.approx(r["images_per_s"] / base, rel=0.02)
        first = by[(r["converter"], 1)]["images_per_s"]
        assert r["scaling"] == pytest.approx(r["images_per_s"] / first, rel=0.02)
        assert r["cpu_s"] > 0 and r["images_per_cpu_s"] == pytest.approx(10 / r["cpu_s"],
                                                                          rel=0.02)
    assert list(tmp_path.iterdir()) == []  # outputs removed
    lines = summary(rows, (1, 2))
    assert len(lines) == 2 and "goal >= 1.5x" in lines[0] and "goal >= 3.0x" in lines[1]
    assert "whole process not measured" in lines[0]


def test_cli_writes_results_with_the_command(folder, tmp_path):
    rc = cli.main(["convert", "--device", "cpu", "--no-tensorboard", "--data", str(folder),
                   "--workers", "1", "--max-side", "64", "--in-process-only",
                   "--output-dir", str(tmp_path)])
    assert rc == 0
    (js,) = tmp_path.glob("*_convert.json")
    data = json.loads(js.read_text())
    assert data["machine"]["command"].startswith("dino-bench convert --device cpu")
    assert {r["converter"] for r in data["rows"]} == set(CONVERTERS)
    assert all(r["verify_s"] >= 0 for r in data["rows"] if r["converter"] != "ffcv-writer")
    assert (tmp_path / js.name.replace(".json", ".md")).is_file()


@pytest.mark.slow  # FFCV's writer as a process imports torch and numba: ~20 s here
def test_whole_process_columns(folder, tmp_path):
    """Each converter also runs as its own process: its wall time includes start-up (so it
    is longer than the in-process time), its tree's peak memory is sampled, and its ratio to
    the FFCV writer's whole process is computed."""
    cfg = ConvertBenchConfig(workers=(1,), max_side=64, verify=False, scratch=str(tmp_path))
    rows = measure(folder, cfg, log=lambda *_: None)
    base = next(r for r in rows if r["converter"] == "ffcv-writer")
    for r in rows:
        assert r["process_s"] > r["seconds"] and r["startup_s"] > 0
        assert r["process_images_per_s"] == pytest.approx(10 / r["process_s"], abs=0.06)
        assert r["process_speedup"] == pytest.approx(
            r["process_images_per_s"] / base["process_images_per_s"], rel=0.1)
        assert r["peak_mb"] > 10  # an interpreter alone is more than 10 MB resident
    assert "whole process" in summary(rows, (1,))[0]
