"""Load ``libdino_fast_kernels.so`` (built by ``build.py``) with ctypes, or say why it cannot be.

    from pipelines.kernels import library
    lib = library.load()                 # a ctypes.CDLL, cached; or KernelsUnavailable
    reason = library.unavailable_reason()  # None when load() would succeed

The loader checks, in this order, and refuses with a message that says what to do:
- a CUDA device is visible to torch (a CPU-only torch build or no GPU: the torch paths run);
- the library exists at ``$DINO_FAST_KERNELS`` or ``pipelines/kernels/lib/`` (else: the
  exact build command, and the log of a failed earlier build if there is one);
- it was built with this ``ABI_VERSION`` and from these sources (``sources_digest``): a
  library left from other code is refused rather than called with the wrong signatures;
- it holds code for this GPU's architecture (``sm_XY`` runs on ``sm_XZ``, ``Z >= Y``).
Modules that call the library declare their own functions' ``argtypes``/``restype`` on the
returned CDLL (see ``dino_core/loss/cuda.py``).
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

from . import build


class KernelsUnavailable(RuntimeError):
    """The kernel library cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class LibraryInfo:
    """What a built library reports about itself."""

    path: Path
    abi_version: int
    archs: tuple[str, ...]
    digest: str


def library_path() -> Path:
    """``$DINO_FAST_KERNELS`` when set, else ``pipelines/kernels/lib/libdino_fast_kernels.so``."""
    return build.default_library_path()


def build_command(arch: str | None = None) -> str:
    """The command that builds the library where the loader looks."""
    cmd = f"dino-build-kernels --arch {arch or build.DEFAULT_ARCH}"
    if library_path() != build.DEFAULT_OUT_DIR / build.LIBRARY_NAME:
        cmd += f" --out {library_path()}"
    return cmd


def open_library(path: Path, arch: str | None = None) -> tuple[ctypes.CDLL, LibraryInfo]:
    """Load ``path`` and check its ABI version and sources digest (not the device).

    ``arch`` only shapes the build command quoted in errors. Raises ``KernelsUnavailable``.
    """
    rebuild = f"build it with `{build_command(arch)}`"
    if not path.is_file():
        log = build.log_path(path)
        failed = (f" (the last build failed: see {log})"
                  if log.is_file() and "[exit status 0]" not in log.read_text() else "")
        raise KernelsUnavailable(f"no kernel library at {path}{failed}: {rebuild}")
    try:
        lib = ctypes.CDLL(str(path))
        lib.dino_fast_kernels_abi_version.restype = ctypes.c_int
        lib.dino_fast_kernels_archs.restype = ctypes.c_char_p
        lib.dino_fast_kernels_digest.restype = ctypes.c_char_p
        info = LibraryInfo(path, int(lib.dino_fast_kernels_abi_version()),
                           tuple(lib.dino_fast_kernels_archs().decode().split()),
                           lib.dino_fast_kernels_digest().decode())
    except (OSError, AttributeError) as exc:
        raise KernelsUnavailable(f"{path} is not a loadable dino-fast kernel library "
                                 f"({exc}): re{rebuild}") from exc
    if info.abi_version != build.ABI_VERSION:
        raise KernelsUnavailable(f"{path} has ABI version {info.abi_version}, this code needs "
                                 f"{build.ABI_VERSION}: re{rebuild}")
    try:
        digest = build.sources_digest()
    except build.BuildError:
        digest = info.digest  # an install without the sources: nothing to compare against
    if info.digest != digest:
        raise KernelsUnavailable(f"{path} was built from other kernel sources than these "
                                 f"(digest {info.digest}, sources {digest}): re{rebuild}")
    return lib, info


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether code built for ``arch`` (``sm_90``, ``sm_90a``) runs on a GPU of compute
    ``capability``: the same major and a minor at least the arch's; ``a``/``f`` variants
    only on their exact capability."""
    text = build.parse_arch(arch)
    digits, variant = text[3:].rstrip("af"), text[-1] in "af"
    major, minor = int(digits[:-1]), int(digits[-1])
    if variant:
        return (major, minor) == tuple(capability)
    return major == capability[0] and minor <= capability[1]


def _cuda_device() -> tuple[tuple[int, int] | None, str | None]:
    """(compute capability of the current CUDA device, None) or (None, why there is none)."""
    import torch

    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    return tuple(torch.cuda.get_device_capability()), None


@functools.cache
def _load(path: Path) -> tuple[ctypes.CDLL | None, LibraryInfo | None, str | None]:
    capability, no_device = _cuda_device()
    arch = f"sm_{capability[0]}{capability[1]}" if capability else None
    try:
        lib, info = open_library(path, arch)
    except KernelsUnavailable as exc:
        if no_device is not None:
            return None, None, (f"no CUDA device ({no_device}): the CUDA kernels need one. "
                                f"For a GPU machine: {exc}")
        return None, None, str(exc)
    if no_device is not None:
        return None, info, (f"no CUDA device ({no_device}): the CUDA kernels need one; the "
                            f"library at {path} (built for {' '.join(info.archs)}) is ready "
                            "for a GPU machine")
    if not any(arch_runs_on(a, capability) for a in info.archs):
        return None, info, (f"{path} is built for {' '.join(info.archs)}, this GPU is {arch}: "
                            f"rebuild with `{build_command(arch)}`")
    return lib, info, None


def load() -> ctypes.CDLL:
    """The checked library (cached per path); raises ``KernelsUnavailable`` saying why not."""
    lib, _, reason = _load(library_path())
    if lib is None:
        raise KernelsUnavailable(reason)
    return lib


def info() -> LibraryInfo | None:
    """What the library at ``library_path()`` reports, when it passes the ABI and sources
    checks (whatever the device); else None."""
    return _load(library_path())[1]


def unavailable_reason() -> str | None:
    """None when ``load()`` succeeds, else why it does not and what to do."""
    return _load(library_path())[2]


def clear_cache() -> None:
    """Forget earlier loads (after a rebuild, or in tests that change ``$DINO_FAST_KERNELS``)."""
    _load.cache_clear()
