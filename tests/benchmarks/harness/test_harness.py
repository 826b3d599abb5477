"""The harness: statistics on known inputs, timing bookkeeping, memory, machine, result files."""
import json

import numpy as np
import pytest
import torch

from benchmarks.harness import timing
from benchmarks.harness.timing import (BenchmarkResult, PeakMemory, PlotSpec, describe_machine,
                                machine_slug, summarize, time_fn, write_results)
from benchmarks.harness.report import format_value, markdown_table


def test_summarize_known_values():
    t = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (t.median, t.q1, t.q3, t.min, t.max, t.mean) == (3.0, 2.0, 4.0, 1.0, 5.0, 3.0)
    assert t.iqr == 2.0
    assert t.samples == (5.0, 1.0, 4.0, 2.0, 3.0)  # kept in measurement order
    even = summarize([4.0, 1.0, 3.0, 2.0])
    assert even.median == 2.5 and even.q1 == 1.75 and even.q3 == 3.25
    assert summarize([2.0]).iqr == 0.0
    assert t.per_second(6) == 2.0
    row = t.as_row("fwd")
    assert row["fwd_median_ms"] == 3000.0 and row["fwd_iqr_ms"] == 2000.0 and row["fwd_n"] == 5


def test_summarize_matches_numpy_quantiles():
    xs = np.random.default_rng(0).exponential(size=37).tolist()
    t = summarize(xs)
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    assert t.q1 == pytest.approx(q1) and t.median == pytest.approx(med)
    assert t.q3 == pytest.approx(q3)


def test_summarize_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_time_fn_calls_warmup_plus_iters():
    calls = []
    t = time_fn(lambda: calls.append(1), "cpu", warmup=2, iters=5)
    assert len(calls) == 7 and len(t.samples) == 5
    assert all(s >= 0 for s in t.samples) and t.min <= t.median <= t.max
    with pytest.raises(ValueError):
        time_fn(lambda: None, "cpu", warmup=0, iters=0)


class StepClock:
    """``time.perf_counter`` as the test decides: it moves only when ``advance`` is called."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_time_fn_runs_setup_before_every_call_untimed(monkeypatch):
    clock, events = StepClock(), []
    monkeypatch.setattr(timing, "time", clock)  # load on the machine cannot move this clock
    t = time_fn(lambda: (events.append("call"), clock.advance(0.25)), "cpu", warmup=1,
                iters=3, setup=lambda: (events.append("setup"), clock.advance(1.0)))
    assert events == ["setup", "call"] * 4
    assert t.samples == (0.25, 0.25, 0.25)  # each call's own time; the setup's is outside


def test_peak_memory_sees_a_large_cpu_allocation():
    with PeakMemory("cpu") as mem:
        block = torch.ones(40_000_000)  # 160 MB, touched
    assert mem.extra > 100e6
    assert mem.peak >= mem.start
    del block


def test_machine_slug():
    assert machine_slug("", 2) == "cpu-2core"
    assert machine_slug("NVIDIA H200", 16) == "h200"
    assert machine_slug("Tesla V100-SXM2-16GB", 8) == "v100"
    assert machine_slug("NVIDIA GeForce GTX 1080", 8) == "geforce-gtx-1080"


def test_describe_machine_names_command_and_versions():
    m = describe_machine("cpu", ["/usr/bin/dino-bench", "patch", "--quick", "--data", "a b"])
    assert m.command == "dino-bench patch --quick --data 'a b'"
    assert m.cpu_cores >= 1 and m.gpu == "" and m.slug == f"cpu-{m.cpu_cores}core"
    assert m.versions["torch"] == torch.__version__
    assert {"numpy", "dali", "ffcv", "python"} <= set(m.versions)
    assert len(m.date) == 19 and m.date[4] == "-"


def test_format_value():
    assert format_value(None) == "–"
    assert format_value(1234.56) == "1,235" and format_value(0.012345) == "0.0123"
    assert format_value(7) == "7" and format_value("ok") == "ok"
    table = markdown_table([{"a": 1, "b": None}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | – |"]


def test_write_results_writes_every_format(tmp_path):
    machine = describe_machine("cpu", ["dino-bench", "patch"])
    rows = [{"arch": "vit_tiny", "patch": p, "im_s": 100.0 / p, "other": None}
            for p in (16, 8)]
    result = BenchmarkResult(what="demo", title="Demo", machine=machine, baseline="nothing",
                             rows=rows, columns=["arch", "patch", "im_s"], notes=["a note"])
    spec = PlotSpec(x="patch", group=("arch",), panels=(("images/s", ("im_s",)),))
    paths = write_results(result, tmp_path, spec)
    stem = f"cpu-{machine.cpu_cores}core_{machine.date[:7].replace('-', '')}_demo"
    assert result.stem == stem
    assert {p.name for k, p in paths.items() if k != "tensorboard"} == {
        f"{stem}.{e}" for e in ("json", "csv", "md", "png")}
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["im_s"] == 12.5 and data["machine"]["slug"] == machine.slug
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == "arch,patch,im_s,other" and csv_lines[2] == "vit_tiny,8,12.5,"
    md = paths["md"].read_text()
    assert "| arch | patch | im_s |" in md and "| vit_tiny | 8 | 12.5 |" in md
    assert "- baseline: nothing" in md and "a note" in md and f"({stem}.png)" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if "tensorboard" in paths:
        assert any(paths["tensorboard"].iterdir())


def test_bar_plot_and_no_tensorboard(tmp_path):
    machine = describe_machine("cpu", ["dino-bench"])
    result = BenchmarkResult(what="bars", title="Bars", machine=machine, baseline="a",
                             rows=[{"backend": "a", "v": 1.0}, {"backend": "b", "v": None}])
    spec = PlotSpec(x="backend", group=("backend",), kind="bar", panels=(("v", ("v",)),))
    paths = write_results(result, tmp_path, spec, tensorboard=False)
    assert "tensorboard" not in paths and paths["png"].stat().st_size > 0
    assert not (tmp_path / "tensorboard").exists()


def test_report_does_not_import_harness():
    """One direction only: timing -> report (report holds the result types)."""
    import ast
    from pathlib import Path

    import benchmarks.harness.report as report

    tree = ast.parse(Path(report.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.endswith("timing")}, imported
    from benchmarks.harness import timing
    assert timing.MachineInfo is report.MachineInfo


def test_data_line_in_the_header(tmp_path):
    machine = describe_machine("cpu", ["dino-bench", "pipeline"])
    result = BenchmarkResult(what="d", title="D", machine=machine, baseline="b",
                             rows=[{"a": 1}], data="corpus X: 3 images",
                             data_stats={"images": 3})
    paths = write_results(result, tmp_path, tensorboard=False)
    assert "- data: corpus X: 3 images" in paths["md"].read_text().splitlines()
    assert json.loads(paths["json"].read_text())["data_stats"] == {"images": 3}
