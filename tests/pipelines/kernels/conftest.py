"""One build of the kernel library per test session (about 15 s of nvcc for sm_90)."""
import pytest

from pipelines.kernels import build


@pytest.fixture(scope="session")
def built_library(tmp_path_factory):
    """The library built here for sm_90 with nvcc, warnings as errors; skipped without nvcc."""
    try:
        build.find_nvcc()
    except build.BuildError as exc:
        pytest.skip(f"nvcc is needed to build the kernel library: {exc}")
    out = tmp_path_factory.mktemp("kernels") / build.LIBRARY_NAME
    return build.build(["sm_90"], out, extra_flags=("--Werror", "all-warnings"))


@pytest.fixture
def nvcc_or_skip():
    """Skip a test that runs nvcc where there is none."""
    try:
        build.find_nvcc()
    except build.BuildError as exc:
        pytest.skip(str(exc))
