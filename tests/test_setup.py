"""setup.py and the install commands: the CI command is the README's, the kernel build at
install time never fails an install, and the wheel ships every file a run reads."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^apt-get update .*pytest -q$", readme, flags=re.M)
    assert len(commands) == 1 and commands[0] in ci
    assert '".[all,dev,cpu,interop]"' in commands[0]


def test_install_without_nvcc_skips_the_kernels_and_succeeds(tmp_path):
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda"))  # a CUDA_HOME without nvcc
    proc = subprocess.run([sys.executable, "setup.py", "build_py", "--build-lib",
                           str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dino-fast: CUDA kernels not built" in proc.stdout and "has no bin/nvcc" in proc.stdout
    assert (tmp_path / "lib" / "pipelines" / "kernels" / "build.py").is_file()
    assert not (tmp_path / "lib" / "pipelines" / "kernels" / "lib").exists()


# ----------------------------------------------------------------------------- the wheel
RUN_FILES = (".cu", ".cuh", ".h", ".cpp", ".yaml")  # read at run time besides the code


def files_a_run_reads() -> list[str]:
    """Every kernel source and config preset in the package folders, as wheel paths."""
    found = []
    for package in ("dino_core", "pipelines"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix in RUN_FILES and "__pycache__" not in path.parts \
                    and "lib" not in path.relative_to(ROOT / package).parts:
                found.append(path.relative_to(ROOT).as_posix())
    return sorted(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built by pip from a copy of the source tree (no kernel build)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "lib", "results", ".carry", "runs"))
    env = dict(os.environ, DINO_BUILD_KERNELS="0")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp / "out"), str(src)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (built,) = (tmp / "out").glob("dino_fast-*.whl")
    return built


def test_the_wheel_ships_every_kernel_source_and_preset(wheel, tmp_path):
    from pipelines.kernels import build

    wanted = files_a_run_reads()
    assert "dino_core/configs/quickstart.yaml" in wanted
    assert "dino_core/loss/csrc/dino_loss_kernels.cuh" in wanted  # was missing from 0.1.0
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        zf.extractall(tmp_path)
    assert [f for f in wanted if f not in shipped] == []
    # An installed package's kernel sources have the repository's digest, so a library built
    # from them is accepted by the loader there.
    installed = tuple(tmp_path / s for s in build.SOURCES)
    assert build.sources_digest(installed) == build.sources_digest()


@pytest.mark.slow
def test_quickstart_runs_from_the_installed_wheel(wheel, tmp_path):
    """pip install of the wheel (no editable install) into a fresh virtual environment that
    borrows this environment's dependencies; a few quickstart steps run from there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import dino_core; print(dino_core.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # not this checkout
    proc = subprocess.run(
        [str(venv / "bin" / "dino-train"), "--config", "quickstart", "--epochs", "1",
         "--max-iters-per-epoch", "2", "--no-knn", "--no-progress", "--num-workers", "0",
         "--output-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint.pth").is_file()


def test_dali_extras_for_cuda_12_and_13_pin_the_same_release():
    text = (ROOT / "setup.py").read_text()
    version = re.search(r'DALI_VERSION = "([\d.]+)"', text).group(1)
    assert '"dali": [f"nvidia-dali-cuda120=={DALI_VERSION}"' in text
    assert '"dali-cuda13": [f"nvidia-dali-cuda130=={DALI_VERSION}"' in text
    readme = (ROOT / "README.md").read_text()
    assert "dali-cuda13" in readme and "nvidia-dali-cuda130" in readme
    assert version == "2.4.0"  # the release the CPU tests run (environment.md)
