"""tools/launch_multinode.sh and tools/slurm_dino.sbatch pass the large-model options on to
dino-train (PARALLEL, ACTIVATION_CHECKPOINTING, GRAD_ACCUM, or the options themselves),
with stand-ins for torchrun / srun that record the command line."""
import os
import subprocess
from pathlib import Path

import pytest

from dino_core.cli.train import build_parser

ROOT = Path(__file__).resolve().parents[2]
RECORD = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_DIR/args"
"""
SCONTROL = """#!/usr/bin/env bash
echo node01
"""


def launched(tmp_path: Path, script: str, env: dict) -> list[str]:
    """The dino-train arguments ``script`` started, given ``env`` and ``--epochs 1``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("torchrun", RECORD), ("srun", RECORD), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "GPUS_PER_NODE": "1", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node01",
           "SLURM_JOB_NUM_NODES": "1", **env}
    r = subprocess.run(["bash", str(ROOT / "tools" / script), "--epochs", "1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    args = (tmp_path / "args").read_text().splitlines()
    return args[args.index("dino_core.cli.train") + 1:]


@pytest.mark.parametrize("script", ["launch_multinode.sh", "slurm_dino.sbatch"])
def test_the_launchers_pass_the_large_model_options_to_dino_train(tmp_path, script):
    assert launched(tmp_path, script, {}) == ["--epochs", "1"]
    args = launched(tmp_path, script, {"PARALLEL": "fsdp", "ACTIVATION_CHECKPOINTING": "1",
                                       "GRAD_ACCUM": "4"})
    assert args == ["--parallel", "fsdp", "--activation-checkpointing", "--grad-accum", "4",
                    "--epochs", "1"]
    parsed = build_parser().parse_args(args)  # what dino-train understands
    assert (parsed.parallel, parsed.activation_checkpointing, parsed.grad_accum) == (
        "fsdp", True, 4)
