"""tools/slurm_dino.sbatch's time-limit path with stand-ins for srun, scancel and scontrol:
SIGUSR1 to the batch shell -> SIGTERM to the job's processes -> they exit 143 -> requeue."""
import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINER = """#!/usr/bin/env python3
import os, signal, sys, time
open(os.environ["FAKE_DIR"] + "/trainer.pid", "w").write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
time.sleep(60)
sys.exit(0)
"""
SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >> "$FAKE_DIR/calls"
kill -TERM "$(cat "$FAKE_DIR/trainer.pid")"
"""
SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_DIR/calls"
[ "$1" = show ] && echo node01
exit 0
"""


def _fake(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_usr1_checkpoints_through_sigterm_and_requeues(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir / "srun", TRAINER)
    _fake(bin_dir / "scancel", SCANCEL)
    _fake(bin_dir / "scontrol", SCONTROL)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node01", "SLURM_JOB_NUM_NODES": "1"}
    script = ROOT / "tools" / "slurm_dino.sbatch"
    assert "#SBATCH --signal=B:USR1@" in script.read_text()
    shell = subprocess.Popen(["bash", str(script), "--epochs", "1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120  # a hang guard: the loop ends when the trainer is up
    while not (tmp_path / "trainer.pid").exists():
        assert time.time() < deadline and shell.poll() is None
        time.sleep(0.05)
    shell.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does
    out = shell.communicate(timeout=120)[0]
    assert shell.returncode == 143, out
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "scancel --signal=TERM 42" in calls and calls[-1] == "scontrol requeue 42", calls
    assert "requeueing" in out
