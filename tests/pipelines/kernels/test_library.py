"""The loader: why the library cannot be used, and what to do about it."""
import pytest
import torch

from pipelines.kernels import build, library

NO_GPU = not torch.cuda.is_available()


@pytest.fixture
def library_at(monkeypatch):
    """Point the loader at a path through $DINO_FAST_KERNELS (cache cleared around)."""
    def point(path):
        monkeypatch.setenv(build.ENV_LIBRARY, str(path))
        library.clear_cache()
        return path
    yield point
    library.clear_cache()


@pytest.mark.skipif(not NO_GPU, reason="checks the message of a machine without a GPU")
def test_without_gpu_or_library_the_reason_says_what_to_do(library_at, tmp_path):
    path = library_at(tmp_path / "missing" / build.LIBRARY_NAME)
    reason = library.unavailable_reason()
    assert reason.startswith("no CUDA device (torch ")
    assert f"no kernel library at {path}" in reason
    assert f"`dino-build-kernels --arch sm_90 --out {path}`" in reason
    with pytest.raises(library.KernelsUnavailable) as err:
        library.load()
    assert str(err.value) == reason


@pytest.mark.skipif(not NO_GPU, reason="checks the message of a machine without a GPU")
def test_without_gpu_a_built_library_is_reported_ready(library_at, built_library):
    library_at(built_library)
    reason = library.unavailable_reason()
    assert "no CUDA device" in reason and "ready for a GPU machine" in reason
    assert "sm_90" in reason
    assert library.info().archs == ("sm_90",)


def test_missing_library_after_a_failed_build_points_at_the_log(tmp_path):
    path = tmp_path / build.LIBRARY_NAME
    build.log_path(path).write_text("nvcc error\n[exit status 2]\n")
    with pytest.raises(library.KernelsUnavailable, match="the last build failed: see .*build.log"):
        library.open_library(path)


def test_a_file_that_is_not_the_library_is_refused(tmp_path):
    path = tmp_path / build.LIBRARY_NAME
    path.write_bytes(b"not an ELF file")
    with pytest.raises(library.KernelsUnavailable, match="not a loadable dino-fast kernel"):
        library.open_library(path)


def test_abi_mismatch_is_refused(built_library, monkeypatch):
    monkeypatch.setattr(build, "ABI_VERSION", build.ABI_VERSION + 1)
    with pytest.raises(library.KernelsUnavailable, match="has ABI version .* rebuild it with"):
        library.open_library(built_library)


def test_library_from_other_sources_is_refused(built_library, monkeypatch):
    monkeypatch.setattr(build, "sources_digest", lambda *args, **kwargs: "0" * 16)
    with pytest.raises(library.KernelsUnavailable, match="built from other kernel sources"):
        library.open_library(built_library)


@pytest.mark.parametrize("arch,capability,runs", [
    ("sm_90", (9, 0), True), ("sm_80", (8, 6), True), ("sm_86", (8, 0), False),
    ("sm_80", (9, 0), False), ("sm_90", (10, 0), False), ("sm_90a", (9, 0), True),
    ("sm_90a", (9, 1), False)])
def test_which_architectures_run_on_which_gpu(arch, capability, runs):
    assert library.arch_runs_on(arch, capability) is runs


@pytest.mark.gpu
def test_default_library_loads_on_this_gpu():
    """The GPU check: the library built here for sm_90 (carried to the GPU machine)."""
    library.clear_cache()
    assert library.unavailable_reason() is None, library.unavailable_reason()
    capability = torch.cuda.get_device_capability()
    assert any(library.arch_runs_on(a, capability) for a in library.info().archs)
    assert library.load() is library.load()
