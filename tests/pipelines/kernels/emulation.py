"""The CPU emulation of the kernel library, for the tests marked ``device_emulation``.

``emulation_library`` (a session fixture) is the library built by ``build.build_emulation``
once per sources digest (cached in ``$DINO_FAST_CACHE/kernels``, warnings as errors), or the
one ``$DINO_FAST_KERNELS_EMULATION`` names (the sanitizer runs of test_sanitizers.py pass
their ASan / TSan builds that way, with ``$DINO_EMULATION_SANITIZE`` saying which). A new
module of device_emulation tests belongs in test_sanitizers.EMULATION_MODULES too. ``emulated`` selects it for one test
(``library.use_emulation``) and gives the test hooks of the stand-in runtime, reset after.

    from tests.pipelines.kernels.emulation import emulated, emulation_library  # fixtures
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from pipelines.kernels import build, library
from pipelines.photometric import host_twin

WERROR = ("-Werror",)


def cache_dir() -> Path:
    """Where emulation builds are kept: ``$DINO_FAST_CACHE/kernels`` (as the host twin's)."""
    return host_twin.cache_dir().parent / "kernels"


PROBE = build.ROOT / "tests" / "pipelines" / "kernels" / "emulation_probe.cu"


def cached_build(sanitize: str | None = None, sources: tuple[Path, ...] = build.SOURCES,
                 name: str = "libdino_fast_kernels_emulation") -> Path:
    """The emulation library of ``sources`` (with ``sanitize``: "address" or "thread"),
    built on first use and kept per sources digest; a failed build fails the caller with the
    compiler's log."""
    digest = build.sources_digest(sources, emulation=True)
    path = cache_dir() / f"{name}-{sanitize or 'plain'}-{digest}.so"
    if not path.is_file():
        build.build_emulation(path, sanitize=sanitize, sources=sources, extra_flags=WERROR)
    return path


def probe_library(sanitize: str | None = None) -> Path:
    """The probe kernels of ``emulation_probe.cu`` with the emulation runtime."""
    return cached_build(sanitize, (PROBE,), "libemulation_probe")


@pytest.fixture(scope="session")
def emulation_library() -> Path:
    """The emulation library the device_emulation tests run on (skipped without g++)."""
    given = os.environ.get(build.ENV_EMULATION)
    if given and given != "1":
        return Path(given)
    try:
        build.find_cxx()
    except build.BuildError as exc:
        pytest.skip(f"the CPU emulation of the kernels needs a C++ compiler: {exc}")
    return cached_build()


class Hooks:
    """The stand-in runtime's test hooks (exported by emulation builds only)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))  # the same handle the loader has: one runtime

    def set_max_cluster(self, blocks: int) -> None:
        """The largest cluster the emulated device schedules (0: its own 16)."""
        self.lib.dino_emulation_set_max_cluster(blocks)

    def set_optin_smem(self, nbytes: int) -> None:
        """The opt-in shared memory per block the emulated device offers (0: an H100's)."""
        self.lib.dino_emulation_set_optin_smem(nbytes)

    def set_driver_version(self, version: int) -> None:
        """What cudaDriverGetVersion reports (0: the runtime's own version). The loader's
        cache is cleared, as the version decides what it loads."""
        self.lib.dino_emulation_set_driver_version(version)
        library.clear_cache()

    def pool_threads(self) -> int:
        """OS threads the emulation has started so far (they are reused)."""
        return self.lib.dino_emulation_pool_threads()


@pytest.fixture
def emulated(emulation_library):
    """The emulation selected for this test; its hooks, restored afterwards."""
    hooks = Hooks(emulation_library)
    with library.use_emulation(emulation_library):
        try:
            yield hooks
        finally:
            hooks.set_max_cluster(0)
            hooks.set_optin_smem(0)
            hooks.set_driver_version(0)
