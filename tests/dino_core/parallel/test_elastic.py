"""A rank killed mid-run is restarted by torchrun's elastic agent; the job resumes and ends."""
import os
import subprocess
import sys
from pathlib import Path

from dino_core.formats.files import load_checkpoint
from tests.dino_core.parallel.test_distributed_run import free_port
from tests.dino_core.train.train_helpers import tiny_overrides
from tests.pipelines.images import write_image_folder

ROOT = Path(__file__).resolve().parents[3]


def test_killed_rank_restarts_and_resumes_from_last_checkpoint(tmp_path):
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=8)
    out = tmp_path / "run"
    marker = tmp_path / "killed"
    sets = sum((["--set", o] for o in tiny_overrides(data, out, epochs=3, batch=2, iters=2)), [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
         "--max-restarts", "1", "-m", "tests.dino_core.parallel.elastic_worker", str(marker), "--",
         "--output-dir", str(out), *sets],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert marker.exists(), "rank 1 was never killed: the test did not exercise a restart"
    assert "resumed from" in log
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["epoch"] == 3 and ckpt["iteration"] == 6
