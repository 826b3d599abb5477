"""setup.py and the install commands: the CI command is the README's, and the kernel build at
install time never fails an install."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^apt-get update .*pytest -q$", readme, flags=re.M)
    assert len(commands) == 1 and commands[0] in ci
    assert '".[all,dev,cpu]"' in commands[0]


def test_install_without_nvcc_skips_the_kernels_and_succeeds(tmp_path):
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda"))  # a CUDA_HOME without nvcc
    proc = subprocess.run([sys.executable, "setup.py", "build_py", "--build-lib",
                           str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dino-fast: CUDA kernels not built" in proc.stdout and "has no bin/nvcc" in proc.stdout
    assert (tmp_path / "lib" / "dino_core" / "kernels" / "build.py").is_file()
    assert not (tmp_path / "lib" / "dino_core" / "kernels" / "lib").exists()
