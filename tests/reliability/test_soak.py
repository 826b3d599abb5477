"""Long runs of the reference loader: flat memory; workers and threads gone on completion,
on close and on Ctrl-C (no orphan processes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipelines import build_loader
from tests.pipelines.images import write_image_folder
from tests.reliability.checks import PLAIN_SPEC, REPO

RSS_TOLERANCE = 0.03  # growth allowed after the first epoch ("within a few percent")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("soak"), num_classes=3, per_class=6,
                              long_side=(32, 48))


def _workers(before: set[int]) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _extra_threads(baseline: set[int], timeout: float = 10.0) -> list[str]:
    """Names of threads not in ``baseline`` that are still alive after ``timeout`` s
    (multiprocessing's queue feeder threads finish a moment after the queues close)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t.name for t in threading.enumerate() if t.ident not in baseline]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def soak(images, epochs: int) -> None:
    """Iterate ``epochs`` epochs with 2 workers. At the last batch of each epoch record the
    RSS of the main process and of the epoch's workers; after each epoch the workers and
    any extra threads must be gone."""
    baseline_children = {p.pid for p in psutil.Process().children(recursive=True)}
    baseline_threads = {t.ident for t in threading.enumerate()}
    loader = build_loader(images, "reference", batch_size=3, spec=PLAIN_SPEC, num_workers=2,
                          drop_last=True)
    main_rss, worker_rss = [], []
    try:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            workers: list[psutil.Process] = []
            for i, _ in enumerate(loader):
                if i == len(loader) - 1:
                    workers = _workers(baseline_children)
                    main_rss.append(psutil.Process().memory_info().rss)
                    worker_rss.append(_rss(workers))
            assert len(workers) == 2
            _, alive = psutil.wait_procs(workers, timeout=60)  # a hang guard: ends when they do
            assert not alive, f"epoch {epoch}: workers still running after the epoch ended"
            extra = _extra_threads(baseline_threads)
            assert extra == [], f"epoch {epoch}: threads still running after the epoch: {extra}"
    finally:
        loader.close()
    for name, series in (("main process", main_rss), ("workers", worker_rss)):
        first, peak = series[0], max(series[1:])
        assert peak <= first * (1 + RSS_TOLERANCE), (
            f"{name} RSS grew from {first / 2**20:.1f} MiB after epoch 1 to "
            f"{peak / 2**20:.1f} MiB: " + ", ".join(f"{r / 2**20:.1f}" for r in series))
    assert _workers(baseline_children) == []


def test_a_few_epochs_keep_memory_flat_and_leave_no_workers(images):
    soak(images, epochs=6)


@pytest.mark.slow
def test_soak_many_epochs_keep_memory_flat_and_leave_no_workers(images):
    soak(images, epochs=150)


def test_close_mid_epoch_stops_the_workers(images):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    loader = build_loader(images, "reference", batch_size=3, spec=PLAIN_SPEC, num_workers=2)
    batches = iter(loader)
    next(batches)
    workers = _workers(before)
    assert len(workers) == 2
    loader.close()
    _, alive = psutil.wait_procs(workers, timeout=60)  # a hang guard: ends when they do
    assert not alive


def _session(sid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of session ``sid``: a child started with
    ``start_new_session`` and every process it forked, even once re-parented as orphans."""
    members = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (OSError, psutil.Error):
            pass
    return members


def _signal_state(pid: int) -> str:
    """What the process does with signals (blocked, ignored, caught masks from /proc) and
    the SIGINT bit (2) of each: why a SIGINT was not acted on, when it was not."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as e:
        return f"no /proc status ({e})"
    masks = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in lines
                                         if ln.startswith(("SigBlk", "SigIgn", "SigCgt")))}
    return ", ".join(f"{k} {v:#x} (SIGINT {'set' if v >> (signal.SIGINT - 1) & 1 else 'clear'})"
                     for k, v in masks.items())


@pytest.mark.parametrize("target", ["process", "process group"])
def test_ctrl_c_stops_promptly_and_leaves_no_orphan_workers(images, target):
    """SIGINT to the iterating process alone (kill -INT) or to its whole process group
    (Ctrl-C in a terminal): it exits, and no process it started outlives it."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.loader_child",
                             str(images)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("{"), proc.stderr.read()[-2000:]
        deadline = time.monotonic() + 120  # a hang guard: the loop ends when they are up
        while len(psutil.Process(proc.pid).children()) < 2:  # an epoch's workers are up
            assert time.monotonic() < deadline, "no worker processes"
            time.sleep(0.01)
        if target == "process":
            os.kill(proc.pid, signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)  # a hang fails here, not forever
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGINT; {_signal_state(proc.pid)}")
        # No wait here, however loaded the machine: communicate() returned at EOF on pipes
        # every worker inherited, and the loader joins (reaps) the workers it stops before
        # its process exits, so any process of the session still alive now outlived it. (An
        # orphaned DataLoader worker leaves by itself within its 5 s parent check, so
        # waiting would only let orphans slip through.)
        orphans = [f"{p.pid} {p.name()}" for p in _session(proc.pid)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in _session(proc.pid):
            p.kill()
    assert proc.returncode == 130 and "interrupted" in out, err[-2000:]
    assert orphans == [], f"processes {orphans} outlived the interrupted loader"
