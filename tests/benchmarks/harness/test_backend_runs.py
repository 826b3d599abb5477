"""Failure isolation of the per-backend runs: an exception, a crash, a hang or a missing
backend is a row with its reason, the other backends still run, and partial results are
handed out after every backend. Also the time-based loops of pipeline and e2e."""
import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from benchmarks.harness import runs
from benchmarks.harness.runs import (BackendUnavailable, RunLimits, for_each_backend,
                                     run_backend, tree_cpu_seconds)
from benchmarks.data.e2e import TrainerWatch, read_metrics
from benchmarks.data.pipeline import measure_loader, run_pipeline_benchmark, PipelineBenchConfig
from benchmarks.harness.bench_data import DataChoice
from pipelines.batch import Batch

STUCK_S = 600  # how long a stuck stand-in sleeps: far beyond any wait in these tests


def behave(backend: str, path: Path, scratch: str) -> dict:
    """A stand-in measurement whose behaviour is its backend's name (runs in the child)."""
    if backend == "ok":
        return {"images_per_s": 10.0, "pid": os.getpid()}
    if backend == "raises":
        raise ValueError("bad\nbatch")
    if backend == "unavailable":
        raise BackendUnavailable("no such library")
    if backend == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if backend == "exits":
        os._exit(3)
    if backend == "hang":  # a loader worker of its own, then stuck
        worker = subprocess.Popen(["sleep", str(STUCK_S)])
        Path(scratch, "worker.pid").write_text(str(worker.pid))
        time.sleep(STUCK_S)
    raise AssertionError(f"unexpected backend {backend}")


def _path_for(tmp_path):
    def path_for(backend):
        if backend == "noconvert":
            raise ImportError("converter missing")
        return tmp_path
    return path_for


class HangClock:
    """The runner's clock, controlled by the test: it stands still until ``marker`` exists,
    then jumps past any budget (once the hanging backend is provably stuck). So only that
    backend overruns its budget, however long the others take to start on a loaded machine."""

    def __init__(self, marker: Path):
        self.marker = marker

    def monotonic(self) -> float:
        return 1e9 if self.marker.exists() else 0.0


def wait_until_gone(pid: int, what: str, timeout: float = 60) -> None:
    """Wait for ``pid`` to end (a zombie counts as ended). ``timeout`` guards a hang; the
    processes waited for would sleep far longer (``STUCK_S``) if nothing ended them."""
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"{what} (pid {pid}) is still running"
        time.sleep(0.05)


def test_every_failure_is_a_row_and_the_others_still_run(tmp_path, monkeypatch):
    order = ["ok", "raises", "unavailable", "noconvert", "crash", "exits", "hang", "ok"]
    seen = []
    monkeypatch.setattr(runs, "time", HangClock(tmp_path / "worker.pid"))
    rows = for_each_backend(order, {"device": "cpu"}, _path_for(tmp_path),
                            functools.partial(behave, scratch=str(tmp_path)), "test",
                            RunLimits(isolate=True, time_budget=12),
                            on_row=lambda rows: seen.append([r["backend"] for r in rows]))
    status = [r["status"] for r in rows]
    assert status[0] == "ok" and rows[0]["images_per_s"] == 10.0
    assert rows[0]["pid"] != os.getpid()  # measured in a process of its own
    assert status[1] == "failed: ValueError: bad batch"  # one line
    assert status[2] == "skipped: no such library"
    assert status[3] == "skipped: ImportError: converter missing"
    assert status[4] == "failed: process died (SIGSEGV)"
    assert status[5] == "failed: process exited with status 3 without a result"
    assert status[6] == "failed: exceeded its time budget of 12 s (killed)"
    assert status[7] == "ok" and rows[7]["device"] == "cpu"
    assert seen == [order[:i] for i in range(1, len(order) + 1)]  # partial after each
    worker = int((tmp_path / "worker.pid").read_text())
    wait_until_gone(worker, "the hung backend's worker process")  # killed with its tree


def sleeper(backend: str, path: Path) -> dict:
    time.sleep(STUCK_S)
    return {}


def test_a_watch_ends_a_run_with_its_own_row(tmp_path):
    polls = []

    def watch(pid):
        polls.append(pid)
        assert psutil.Process(pid).is_running()
        return {"images_per_s": 3.0, "steps": 7} if len(polls) >= 3 else None
    kind, row = run_backend(sleeper, "slow", tmp_path, RunLimits(), watch)
    # the watch's row, not the sleeper's {}: the watch ended the run (no clock needed)
    assert (kind, row) == ("ok", {"images_per_s": 3.0, "steps": 7})
    wait_until_gone(polls[0], "the watched backend")


def test_in_process_runs_still_turn_exceptions_into_rows(tmp_path):
    limits = RunLimits(isolate=False)
    measure = functools.partial(behave, scratch=str(tmp_path))
    assert run_backend(measure, "ok", tmp_path, limits) == (
        "ok", {"images_per_s": 10.0, "pid": os.getpid()})
    assert run_backend(measure, "raises", tmp_path, limits) == (
        "failed", "ValueError: bad batch")
    with pytest.raises(ValueError, match="time_budget"):
        RunLimits(time_budget=0)


class FakeLoader:
    """Three batches of two images per epoch, 10 ms each."""

    classes, num_samples = ["a"], 6

    def __init__(self):
        self.epochs = []

    def __len__(self):
        return 3

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        for _ in range(3):
            time.sleep(0.01)
            yield Batch([torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)],
                        torch.zeros(2, dtype=torch.int64), torch.arange(2))

    def close(self):
        pass


def test_measure_loader_runs_for_its_seconds_across_epochs():
    loader = FakeLoader()
    row = measure_loader(loader, torch.device("cpu"), batches=2, warmup=1, seconds=0.25,
                         warmup_seconds=0.05)
    assert row["wall_s"] >= 0.25 and row["batches"] >= 2
    assert row["images"] == 2 * row["batches"] and row["epochs"] >= 2
    assert loader.epochs == list(range(len(loader.epochs)))  # set_epoch before each epoch
    assert row["views"] == 2 and row["view_shapes"] == "3x8x8 3x4x4"
    counted = measure_loader(FakeLoader(), torch.device("cpu"), batches=4, warmup=0)
    assert counted["batches"] == 4 and counted["epochs"] == 2


def test_tree_cpu_seconds_counts_children(tmp_path):
    """The child burns until ITS OWN CPU clock reads 0.4 s, however loaded the machine is
    (a wall-clock busy loop gets less CPU under load), then says so and idles."""
    before = tree_cpu_seconds()
    ready = tmp_path / "burnt"
    busy = subprocess.Popen(["python3", "-c", "import time\nwhile time.process_time() < 0.4: "
                             f"pass\nopen({str(ready)!r}, 'w').close()\ntime.sleep(60)"])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never finished its CPU work"
            time.sleep(0.05)
        # /proc counts in clock ticks (10 ms): allow a tick or two below the child's clock
        assert tree_cpu_seconds() - before >= 0.38  # the live child's CPU time is included
        assert tree_cpu_seconds(busy.pid) >= 0.38
    finally:
        busy.kill()
        busy.wait()


def test_trainer_watch_reads_the_last_logged_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    watch = TrainerWatch(metrics, seconds=0.2, batch_size=4)
    assert watch(os.getpid()) is None  # nothing logged yet
    # step 2 after 4 s of trainer time (start-up), 1 s of it waiting for data
    first = {"iteration": 2, "epoch": 0, "loss": 9.0, "images_per_s": 8 / 4.0,
             "data_wait_share": 1 / 4.0}
    metrics.write_text(json.dumps(first) + "\n")
    assert watch(os.getpid()) is None  # the first logged step starts its clock
    time.sleep(0.25)
    assert watch(os.getpid()) is None  # no newer step logged yet
    # step 6: 4 more steps (16 images) in 2 more seconds, 0.5 s of it waiting
    last = {"iteration": 6, "epoch": 1, "loss": 8.0, "images_per_s": 24 / 6.0,
            "data_wait_share": 1.5 / 6.0, "data_wait_ms": 3.0}
    with open(metrics, "a") as f:
        f.write(json.dumps(last) + "\n" + '{"iteration": 8, "ep')  # a line being written
    assert [r["iteration"] for r in read_metrics(metrics)] == [2, 6]
    row = watch(os.getpid())
    assert row["steps"] == 6 and row["images"] == 24 and row["epochs"] == 2
    assert row["images_per_s"] == pytest.approx(16 / 2.0)  # steady: steps 3-6
    assert row["data_wait_share"] == pytest.approx(0.5 / 2.0)
    assert row["cumulative_images_per_s"] == 4.0 and row["cumulative_data_wait_share"] == 0.25
    assert row["warmup_steps_left_out"] == 2
    assert row["data_wait_ms"] == 3.0 and row["wall_s"] >= 0.2 and row["cores_used"] >= 0


def test_pipeline_writes_partial_results_and_survives_a_broken_backend(tmp_path):
    from benchmarks.data.pipeline import make_image_folder
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=(64, 48))
    cfg = PipelineBenchConfig.quick(
        backends=("reference", "ffcv", "nope"), batch_size=2, batches=1, num_workers=0,
        source=DataChoice(data=str(data), backend_data={"ffcv": str(tmp_path / "no.beton")}))
    partial = []
    result = run_pipeline_benchmark(cfg, torch.device("cpu"), ["dino-bench", "pipeline"],
                                    on_partial=partial.append)
    assert [len(r.rows) for r in partial] == [1, 2, 3]
    assert partial[0].rows[0]["speedup"] == 1.0  # ratios in partial results too
    status = {r["backend"]: r["status"] for r in result.rows}
    assert status["reference"] == "ok"
    assert status["ffcv"].startswith("skipped: "), status["ffcv"]  # no such .beton
    assert status["nope"].startswith("skipped: ValueError: unknown backend 'nope'")
    assert "user folder" in result.data and result.data_stats["kind"] == "user"
    assert "not measured: ffcv, nope" in result.notes[0]


def pid_then_sleep(backend: str, path: Path) -> dict:
    Path(path, "child.pid").write_text(str(os.getpid()))
    time.sleep(STUCK_S)
    return {}


def test_a_backend_dies_with_its_parent(tmp_path):
    """A parent killed outright (e.g. by a GPU check's time box) leaves no backend running."""
    script = ("import sys, pathlib\n"
              "from benchmarks.harness.runs import run_backend, RunLimits\n"
              "from tests.benchmarks.harness.test_backend_runs import pid_then_sleep\n"
              "if __name__ == '__main__':\n"
              "    run_backend(pid_then_sleep, 'x', pathlib.Path(sys.argv[1]), RunLimits())\n")
    (tmp_path / "parent.py").write_text(script)
    root = Path(__file__).resolve().parents[3]
    parent = subprocess.Popen(["python3", str(tmp_path / "parent.py"), str(tmp_path)],
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "child.pid").exists():
            assert time.monotonic() < deadline and parent.poll() is None, "no child started"
            time.sleep(0.1)
        child = int((tmp_path / "child.pid").read_text())
        parent.kill()
        parent.wait()
        wait_until_gone(child, "the backend, after its parent was killed,")
    finally:
        parent.kill()
