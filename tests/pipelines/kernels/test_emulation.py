"""The CPU emulation of the kernel library (pipelines/kernels/emulation) and its loading.

The emulation builds the kernels' ``.cu`` sources with g++ against stand-in CUDA headers:
one OS thread per CUDA thread, block and cluster barriers, warp shuffles through a per-warp
exchange, per-block dynamic shared memory with sm_90's limits, cluster launches and the
occupancy query the plan uses. The kernels' own tests on it are
tests/dino_core/loss/test_loss_emulation.py and tests/pipelines/photometric/
test_cuda_emulation.py; test_sanitizers.py reruns them under ASan + UBSan and TSan. Here:
the stand-in itself, through small probe kernels with known answers
(``emulation_probe.cu``), its __half / __nv_bfloat16 rounding against torch's, and how the
loader selects, checks and refuses emulation builds.

What the emulation cannot check (the GPU check's job, the tests marked ``gpu``):
- real register and shared-memory limits: registers per thread, spills, static shared memory
  (reported as 0 here), ``__launch_bounds__`` (ignored), occupancy beyond a simple model of
  cluster scheduling (blocks per SM by threads and shared memory, 16-SM GPCs);
- memory ordering and visibility: the host's atomics and barriers are stronger than the
  GPU's memory model, and warps are not lock-step here; a missing fence or a reordering only
  the GPU does goes unnoticed (TSan finds missing barriers, i.e. data races, not weak-memory
  bugs);
- the GPU's arithmetic: ex2.approx and the other fast-math instructions (libm here), nvcc's
  FMA contraction; results differ in the last bits, hence the GPU tests' tolerances;
- timing, throughput, bank conflicts, coalescing, caches;
- driver and hardware errors: illegal addresses (ASan reports out-of-bounds host accesses
  instead), sticky errors, timeouts, MIG partitioning (only a forced largest cluster size);
- the inline-PTX ``cp.async`` copy of the loss kernel: compiled out (``DINO_PTX_ARCH`` is 0
  in the emulation), the portable load/store branch runs instead; ``__ldg`` is a plain load;
- streams and CUDA graphs: launches are synchronous and every stream is one queue.
"""
import ctypes
import types

import numpy as np
import pytest
import torch

from pipelines.kernels import build, library
from tests.pipelines.kernels.emulation import (Hooks, emulated,  # noqa: F401
                                               emulation_library, probe_library)
from tests.pipelines.photometric.test_host_twin import special_floats

pytestmark = pytest.mark.device_emulation
INVALID_VALUE, INVALID_CONFIGURATION, INSUFFICIENT_DRIVER = 1, 9, 35
LAUNCH_FAILURE, INVALID_CLUSTER_SIZE = 719, 912


@pytest.fixture(scope="module")
def probe():
    """The probe kernels with the emulation runtime (built once per sources digest; under
    the sanitizer that ``$DINO_EMULATION_SANITIZE`` names, as the sanitizer runs set it)."""
    path = probe_library(build.sanitizer())
    lib = ctypes.CDLL(str(path))
    yield lib
    Hooks(path).set_driver_version(0)


def ints(n):
    return (ctypes.c_int * n)()


# ----------------------------------------------------------------------------- device code
def test_shuffles_and_votes_follow_cuda(probe):
    out = ints(64 * 8)
    assert probe.probe_shuffles(64, out) == 0
    got = np.frombuffer(out, dtype=np.int32).reshape(64, 8)
    lane = np.arange(64) % 32
    seg_end = (lane // 8) * 8 + 8
    np.testing.assert_array_equal(got[:, 0], (lane ^ 1) * 10)
    np.testing.assert_array_equal(got[:, 1], np.where(lane + 3 < seg_end, lane + 3, lane) * 10)
    np.testing.assert_array_equal(got[:, 2], np.where(lane >= 2, lane - 2, lane) * 10)
    np.testing.assert_array_equal(got[:, 3], np.full(64, 50))
    np.testing.assert_array_equal(got[:, 4].astype(np.uint32), np.full(64, 0xAAAAAAAA))
    np.testing.assert_array_equal(got[:, 5:7], np.ones((64, 2)))
    np.testing.assert_array_equal(got[:, 7], 2 * (lane ^ 16) + 0)  # (lane ^ 16) + 0.25, x 2


def test_threads_that_return_early_do_not_hold_the_barrier(probe):
    out = ints(3 * 96)
    assert probe.probe_early_exit(3, 96, 40, out) == 0
    got = np.frombuffer(out, dtype=np.int32).reshape(3, 96)
    assert (got[:, :40] == sum(range(40))).all()
    assert (got[:, 40:] == 0).all()  # never written


def test_atomics_count_every_thread(probe):
    count, total, largest = ctypes.c_int(0), ctypes.c_float(0), ctypes.c_int(-1)
    assert probe.probe_atomics(4, 64, ctypes.byref(count), ctypes.byref(total),
                               ctypes.byref(largest)) == 0
    assert (count.value, total.value, largest.value) == (256, 128.0, 255)


@pytest.mark.parametrize("cluster", [2, 3])
def test_cluster_blocks_read_each_others_shared_memory(probe, cluster):
    out = ints(2 * cluster)
    assert probe.probe_cluster_ring(2 * cluster, cluster, out) == 0
    got = np.frombuffer(out, dtype=np.int32)
    block = np.arange(2 * cluster)
    rank = block % cluster
    nxt = block - rank + (rank + 1) % cluster
    np.testing.assert_array_equal(got, 100 * nxt + (rank + 1) % cluster)


def test_static_shared_memory_is_refused_in_clusters_only(probe):
    out = ints(4)
    assert probe.probe_static_shared(4, 1, out) == 0
    assert list(out) == [0, 1, 2, 3]
    if build.sanitizer() != "thread":  # TSan (rightly) reports the refused launch's race
        assert probe.probe_static_shared(4, 2, out) == LAUNCH_FAILURE


def test_shared_memory_starts_as_nan_bytes(probe):
    out = (ctypes.c_uint * 1)()
    assert probe.probe_read_unwritten(out) == 0
    assert out[0] == 0xFFFFFFFF  # NaN in every float type: a read before a write shows


@pytest.mark.parametrize("call", ["probe_shuffle_from_exited", "probe_arrive_without_wait"])
def test_misuse_fails_the_launch(probe, call):
    args = (ints(32),) if call == "probe_shuffle_from_exited" else ()
    assert getattr(probe, call)(*args) == LAUNCH_FAILURE


# ----------------------------------------------------------------------------- launch checks
def test_dynamic_shared_memory_limits_are_sm_90s(probe):
    assert probe.probe_launch(32, 48 * 1024, -1) == 0
    assert probe.probe_launch(32, 48 * 1024 + 1, -1) == INVALID_VALUE  # needs the opt-in
    assert probe.probe_launch(32, 0, 232448 + 1) == INVALID_VALUE  # above 227 KiB: refused
    assert probe.probe_launch(32, 100_000, 100_000) == 0
    assert probe.probe_launch(32, 100_001, -1) == INVALID_VALUE  # above the attribute
    assert probe.probe_launch(32, 232448, 232448) == 0
    assert probe.probe_launch(1025, 0, -1) == INVALID_CONFIGURATION


def test_cluster_sizes_follow_the_portable_and_device_limits(probe, emulation_library):
    assert probe.probe_cluster_launch(8, 8, 0) == 0
    assert probe.probe_cluster_launch(9, 9, 0) == INVALID_CLUSTER_SIZE  # non-portable size
    assert probe.probe_cluster_launch(16, 16, 1) == 0
    assert probe.probe_cluster_launch(17, 17, 1) == INVALID_CLUSTER_SIZE
    assert probe.probe_cluster_launch(6, 4, 1) == INVALID_CLUSTER_SIZE  # grid not a multiple


def test_occupancy_of_clusters_and_a_forced_largest_cluster(probe):
    clusters = ctypes.c_int(-1)
    assert probe.probe_occupancy(16, 100_000, ctypes.byref(clusters)) == 0
    assert clusters.value == 16  # 2 blocks of 100 kB per SM: 2 clusters per 16-SM GPC, 8 GPCs
    probe.dino_emulation_set_max_cluster(8)
    try:
        assert probe.probe_occupancy(16, 1000, ctypes.byref(clusters)) == 0
        assert clusters.value == 0
        assert probe.probe_occupancy(8, 1000, ctypes.byref(clusters)) == 0
        assert clusters.value > 0
    finally:
        probe.dino_emulation_set_max_cluster(0)


def test_a_failed_launch_sets_the_last_error_until_read(probe):
    first, second = ctypes.c_int(-1), ctypes.c_int(-1)
    assert probe.probe_last_error(ctypes.byref(first), ctypes.byref(second)) == \
        INVALID_CONFIGURATION
    assert (first.value, second.value) == (INVALID_CONFIGURATION, 0)


def test_an_old_stand_in_driver_fails_every_call(probe):
    probe.dino_emulation_set_driver_version(12080)
    try:
        assert probe.probe_launch(32, 0, -1) == INSUFFICIENT_DRIVER
    finally:
        probe.dino_emulation_set_driver_version(0)
    assert probe.probe_launch(32, 0, -1) == 0


def test_pool_threads_are_reused_across_launches(probe):
    assert probe.probe_early_exit(2, 96, 96, ints(2 * 96)) == 0
    threads = probe.dino_emulation_pool_threads()
    assert threads >= 96
    assert probe.probe_early_exit(5, 96, 50, ints(5 * 96)) == 0
    assert probe.dino_emulation_pool_threads() == threads


@pytest.mark.parametrize("dtype,code", [(torch.float16, 1), (torch.bfloat16, 2)])
def test_half_and_bfloat16_round_as_torch(probe, dtype, code):
    x = special_floats()
    bits = torch.empty(x.shape, dtype=torch.int16)
    assert probe.dino_emulation_round(ctypes.c_void_p(x.data_ptr()),
                                      ctypes.c_void_p(bits.data_ptr()),
                                      ctypes.c_longlong(x.numel()), code) == 0
    want = x.to(dtype)
    nan = torch.isnan(x)
    assert torch.equal(bits[~nan], want.view(torch.int16)[~nan])
    assert torch.isnan(bits[nan].view(dtype).float()).all()
    back = torch.empty(x.shape, dtype=torch.float32)
    assert probe.dino_emulation_widen(ctypes.c_void_p(want.data_ptr()),
                                      ctypes.c_void_p(back.data_ptr()),
                                      ctypes.c_longlong(x.numel()), code) == 0
    assert torch.equal(back[~nan], want.float()[~nan]) and torch.isnan(back[nan]).all()


# ----------------------------------------------------------------------------- the loader
def test_emulation_library_reports_itself(emulated, emulation_library):
    assert library.unavailable_reason() is None
    info = library.info()
    assert info.archs == ("emulation",) and info.emulated
    assert info.digest == build.sources_digest(emulation=True) != build.sources_digest()
    assert info.cudart_version == 13000
    assert library.device_type() == "cpu" and library.library_path() == emulation_library
    assert library.stream_handle(torch.device("cpu")) is None


def test_selection_by_environment_variable(monkeypatch, emulation_library):
    monkeypatch.delenv(build.ENV_EMULATION, raising=False)
    assert library.emulation_path() is None and library.device_type() == "cuda"
    monkeypatch.setenv(build.ENV_EMULATION, "1")
    assert library.emulation_path() == build.DEFAULT_OUT_DIR / build.EMULATION_LIBRARY_NAME
    monkeypatch.setenv(build.ENV_EMULATION, str(emulation_library))
    assert library.emulation_path() == emulation_library and library.device_type() == "cpu"
    with library.use_emulation("/elsewhere.so") as chosen:  # the API wins
        assert library.library_path() == chosen
    assert "--emulate" in library.build_command()


def test_the_cuda_target_never_loads_an_emulation_build(monkeypatch, emulation_library):
    monkeypatch.delenv(build.ENV_EMULATION, raising=False)
    monkeypatch.setenv(build.ENV_LIBRARY, str(emulation_library))
    library.clear_cache()
    try:
        reason = library.unavailable_reason()
        assert "is the CPU emulation build" in reason and library.device_type() == "cuda"
        with pytest.raises(library.KernelsUnavailable):
            library.load()
    finally:
        library.clear_cache()


def test_the_emulation_target_refuses_a_missing_or_cuda_library(tmp_path):
    with library.use_emulation(tmp_path / "missing.so"):
        library.clear_cache()
        reason = library.unavailable_reason()
    assert "CPU emulation" in reason and "dino-build-kernels --emulate --out" in reason


def test_an_old_driver_is_refused_with_the_reason(emulated):
    """The loader compares the driver's CUDA version with the runtime the library was built
    with (the stand-in driver's version is settable); the glue falls back with that reason."""
    from dino_core.loss import cuda as loss_cuda
    from pipelines.photometric import cuda as photo_cuda

    emulated.set_driver_version(12080)
    reason = library.unavailable_reason()
    assert "driver supports CUDA 12.8, older than the CUDA 13.0 runtime" in reason
    assert loss_cuda.unavailable_reason() == reason == photo_cuda.unavailable_reason()
    emulated.set_driver_version(13020)  # a newer driver
    assert library.unavailable_reason() is None


@pytest.mark.parametrize("driver,runtime,ok", [(13000, 13000, True), (13020, 13000, True),
                                               (13000, 13010, True), (12080, 13000, False),
                                               (14000, 13000, True), (0, 13000, False)])
def test_driver_supports_the_runtime_of_its_major_version(driver, runtime, ok):
    assert library.driver_supports(driver, runtime) is ok


def test_tensors_are_checked_against_the_cuda_target(monkeypatch):
    """The CUDA library takes tensors of one CUDA device; a host tensor is named, not passed
    on as a pointer the GPU would fault on."""
    monkeypatch.delenv(build.ENV_EMULATION, raising=False)
    on = lambda device: types.SimpleNamespace(device=torch.device(device))  # noqa: E731
    library.check_tensors("k", a=on("cuda:0"), b=on("cuda:0"), c=None)
    with pytest.raises(ValueError, match="k: b is on cpu; the CUDA kernels take tensors on a"):
        library.check_tensors("k", a=on("cuda:0"), b=on("cpu"))
    with pytest.raises(ValueError, match="k: b is on cuda:1, a on cuda:0"):
        library.check_tensors("k", a=on("cuda:0"), b=on("cuda:1"))
