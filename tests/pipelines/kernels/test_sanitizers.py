"""The device_emulation tests under AddressSanitizer + UBSan and under ThreadSanitizer, and
proof that the TSan run finds a missing barrier.

Each run is a pytest subprocess of the real interpreter (``sys.executable``, not a launcher
script) with the sanitizer's runtime preloaded (``LD_PRELOAD`` of ``$(gcc
-print-file-name=libasan.so)`` / ``libtsan.so``: Python is not instrumented and the runtime
must be loaded first) and ``$DINO_FAST_KERNELS_EMULATION`` naming the emulation library built
with ``DINO_EMULATION_SANITIZE=address`` / ``=thread``; torch runs single-threaded there (its
OpenMP pool synchronises in ways TSan does not see). A report fails the run: ASan and UBSan
abort (the build passes -fno-sanitize-recover=all), TSan exits with status 66 and its
"WARNING: ThreadSanitizer" is looked for too. Python and torch themselves are not
instrumented, so only the kernels' device code, the emulation and their accesses to tensors
are checked.

Default suite: one loss launch and one photometric launch under each sanitizer, and the
mutation test (every ``__syncthreads()`` removed from a copy of photometric_kernel.cu: the TSan
run must report a data race; a TSan run that stays silent fails it). The whole
device_emulation set under both sanitizers, once (10+ minutes on 2 cores):

    DINO_EMULATION_SANITIZE_ALL=1 PYTHONPATH=$PWD python -m pytest -q tests/pipelines/kernels/test_sanitizers.py
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from pipelines.kernels import build
from pipelines.photometric import host_twin
from tests.pipelines.kernels.emulation import cached_build, probe_library

pytestmark = pytest.mark.device_emulation
ENV_ALL = "DINO_EMULATION_SANITIZE_ALL"
RUNTIME = {"address": "libasan.so", "thread": "libtsan.so"}
OPTIONS = {
    "address": {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1",
                "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"},
    "thread": {"TSAN_OPTIONS": "halt_on_error=0:exitcode=66:report_signal_unsafe=0"},
}
# One loss launch (a cluster of 2 blocks, V = 12), one patch-loss case (a forward and a
# backward launch, 5 blocks) and one photometric launch (both passes, blur tiles above 48 KiB
# of shared memory).
SUBSET = (
    "tests/dino_core/loss/test_loss_emulation.py::"
    "test_kernels_match_reference_and_twin[bf16 V=12 clusters of 2]",
    "tests/dino_core/loss/test_patch_emulation.py::"
    "test_kernel_matches_reference_and_twin[f16 M=5 K=65 (grad in backward)]",
    "tests/pipelines/photometric/test_cuda_emulation.py::"
    "test_widest_blur_opts_in_above_48_kib_of_shared_memory",
)
# Every module with device_emulation tests (the full runs collect only these: importing the
# whole suite under a sanitizer would load DALI, FFCV ... for nothing).
EMULATION_MODULES = ("tests/pipelines/kernels/test_emulation.py",
                     "tests/dino_core/loss/test_loss_emulation.py",
                     "tests/dino_core/loss/test_patch_emulation.py",
                     "tests/pipelines/photometric/test_cuda_emulation.py")
# The mutation: one blurred photometric launch through the library built from a copy of the
# kernel without its barriers (loaded directly: its sources digest is not this checkout's).
MUTANT_RUN = textwrap.dedent("""
    import ctypes, sys, torch
    from pipelines.photometric import kernel_abi
    from pipelines.photometric.constants import kernel_consts
    from tests.pipelines.photometric.test_host_twin import WIDE, wide_blur_views
    abi = kernel_abi.bind(ctypes.CDLL(sys.argv[1]), "dino_photometric_")
    imgs, rows = wide_blur_views(40)
    crops, rows = torch.from_numpy(imgs[:1]), torch.from_numpy(rows[:1])
    out = torch.empty(1, 3, 40, 40)
    kernel_abi.run(abi, [crops], [rows], [out], kernel_abi.constants(kernel_consts(WIDE)))
""")


def runtime(sanitizer: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={RUNTIME[sanitizer]}"],
                          capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.isfile(path):
        pytest.skip(f"gcc has no {RUNTIME[sanitizer]} here")
    return path


def under(sanitizer: str, args: list[str], library=None, timeout: int = 1500):
    """Run ``python <args>`` from the checkout with the sanitizer's runtime preloaded and the
    emulation ``library`` (default: this checkout's sanitized build) selected."""
    library = library or cached_build(sanitizer)
    env = {**os.environ, **OPTIONS[sanitizer], "LD_PRELOAD": runtime(sanitizer),
           build.ENV_EMULATION: str(library), build.ENV_SANITIZE: sanitizer,
           "PYTHONPATH": str(build.ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(ENV_ALL, None)
    return subprocess.run([sys.executable, *args], cwd=build.ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def pytest_under(sanitizer: str, targets: list[str]):
    """The pytest run of ``targets`` under ``sanitizer``; what its tests would compile (the
    photometric host twin, the probes) is built here first, outside the preload."""
    host_twin.load()
    if any("test_emulation.py" in target for target in targets):
        probe_library(sanitizer)
    # --capture=sys: the sanitizers write their reports to file descriptor 2, which pytest
    # would otherwise capture and drop with the output of passing tests
    return under(sanitizer, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                             "--capture=sys", f"--ignore={__file__}", *targets])


def assert_clean(proc, sanitizer: str) -> None:
    out = proc.stdout + proc.stderr
    reports = re.findall(r"(ERROR: AddressSanitizer|runtime error:|WARNING: ThreadSanitizer)",
                         out)
    assert proc.returncode == 0 and not reports, (
        f"under {sanitizer}: exit status {proc.returncode}, {len(reports)} reports\n"
        f"{out[-6000:]}")
    assert re.search(r"\d+ passed", out) and " failed" not in out, out[-3000:]


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_one_launch_of_each_kernel_is_clean(sanitizer):
    assert_clean(pytest_under(sanitizer, list(SUBSET)), sanitizer)


@pytest.mark.timeout(1500)
def test_thread_sanitizer_reports_a_missing_barrier(tmp_path):
    """With every __syncthreads() deleted, the blur's shared-memory tile is read while other
    threads still write it: the TSan run must say so."""
    source = build.ROOT / "pipelines" / "photometric" / "csrc"
    copy = tmp_path / "csrc"
    shutil.copytree(source, copy)
    kernel = copy / "photometric_kernel.cu"
    text = kernel.read_text()
    assert text.count("__syncthreads();") >= 3
    kernel.write_text(text.replace("__syncthreads();", ""))
    mutant = cached_build("thread", (kernel,), "libphotometric_mutant")
    proc = under("thread", ["-c", MUTANT_RUN, str(mutant)])
    out = proc.stdout + proc.stderr
    assert "WARNING: ThreadSanitizer: data race" in out, (
        f"TSan stayed silent on the kernel without barriers (exit status {proc.returncode})\n"
        f"{out[-3000:]}")
    assert "photometric" in out  # the race is in the kernel's code


@pytest.mark.skipif(not os.environ.get(ENV_ALL), reason=f"the full sanitizer runs: set {ENV_ALL}=1")
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_the_whole_device_emulation_set_is_clean(sanitizer):
    assert_clean(pytest_under(sanitizer, ["-m", "device_emulation", *EMULATION_MODULES]),
                 sanitizer)
