"""A conversion killed with SIGKILL half-way: resumable (wds) and never half-accepted (ffcv).

The converter runs as a subprocess that stalls after a given number of images
(``stalled_convert.py``) and is killed there, as a crash would kill it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipelines import build_loader
from pipelines.convert.cli import main as convert_main
from pipelines.dali_backend.readers import ShardDataset
from pipelines.folder import DatasetError
from tests.pipelines.images import write_bad_files, write_image_folder
from tests.reliability.checks import REPO

SHARD_SIZE = 3


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """24 images (8 shards of 3 inputs) and a few bad files that every run must report."""
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", num_classes=3,
                              per_class=8, long_side=(24, 40))
    write_bad_files(root / sorted(p.name for p in root.iterdir())[1])
    return root


def _start_stalling(images: int, marker: Path, *argv: str) -> subprocess.Popen:
    """The converter, stalled for good at its worker's input ``images`` (``marker`` then
    exists)."""
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.stalled_convert", str(images),
                             str(marker), "--no-progress", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"converter ended (status {proc.returncode}) before {what}:\n"
                        f"{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def _crash(proc: subprocess.Popen) -> None:
    """SIGKILL the converter, as a crash would; then kill the worker processes it leaves
    behind, but let multiprocessing's resource tracker exit by itself (it removes the
    shared memory the dead processes held once no process holds its pipe)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()

    def is_tracker(p: psutil.Process) -> bool:
        try:
            return "resource_tracker" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    trackers = [p for p in family if is_tracker(p)]
    for p in family:
        if p not in trackers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    _, alive = psutil.wait_procs(trackers, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_killed_wds_conversion_resumes_to_the_same_shards(src, tmp_path):
    args = ["--format", "wds", "--workers", "1", "--shard-size", str(SHARD_SIZE)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert convert_main(args + ["--no-progress", str(src), str(clean)]) == 0

    stalled = tmp_path / "stalled"
    proc = _start_stalling(2 * SHARD_SIZE + 1, stalled, *args, str(src), str(killed))
    _wait_for(proc, stalled.exists, "the stall in the third shard")
    _crash(proc)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "000001.shard.json").exists(), "two shards were finished before the kill"
    assert not (killed / "manifest.json").exists(), "killed too late: the run had finished"
    with pytest.raises(DatasetError, match="no manifest at"):
        ShardDataset(killed)  # a half-converted folder is refused
    finished = {name: os.stat(killed / name).st_ino for name in ("000000.tar", "000001.tar")}

    assert convert_main(args + ["--no-progress", str(src), str(killed)]) == 0
    assert _digests(killed) == _digests(clean)  # shards, indexes, markers and manifest
    assert {name: os.stat(killed / name).st_ino for name in finished} == finished, \
        "finished shards were written again"
    assert len(ShardDataset(killed)) == len(ShardDataset(clean))


@pytest.mark.ffcv
def test_killed_ffcv_conversion_leaves_nothing_a_reader_accepts(src, tmp_path):
    """Also over a finished earlier conversion (other options): the old .beton must not
    pass for the new one, half-written or not."""
    dst = tmp_path / "ffcv"
    args = ["--format", "ffcv", "--workers", "1"]
    assert convert_main(args + ["--no-progress", "--jpeg-quality", "80", str(src), str(dst)]) == 0
    build_loader(dst, "ffcv", batch_size=2, num_workers=1)  # accepted (not iterated)

    stalled = tmp_path / "stalled"
    proc = _start_stalling(10, stalled, *args, str(src), str(dst))
    partial = dst / ".train.beton.partial"
    _wait_for(proc, stalled.exists, "the stall after 10 images")  # the writer is writing
    assert partial.exists() and partial.stat().st_size > 0
    _crash(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (dst / "manifest.json").exists(), "killed too late: the run had finished"
    for data in (dst, dst / "train.beton", partial):
        with pytest.raises(DatasetError):
            build_loader(data, "ffcv", batch_size=2, num_workers=1)

    assert convert_main(args + ["--no-progress", str(src), str(dst)]) == 0
    loader = build_loader(dst, "ffcv", batch_size=2, num_workers=1)
    assert loader.num_samples == 24
