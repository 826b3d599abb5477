"""Load the kernel library (built by ``build.py``) with ctypes, or say why it cannot be.

    from pipelines.kernels import library
    lib = library.load()                 # a ctypes.CDLL, cached; or KernelsUnavailable
    reason = library.unavailable_reason()  # None when load() would succeed

Two targets, one loader and one C interface:
- the CUDA library, ``libdino_fast_kernels.so`` at ``$DINO_FAST_KERNELS`` or
  ``pipelines/kernels/lib/``: what training uses, on CUDA tensors;
- the CPU emulation, ``libdino_fast_kernels_emulation.so`` (``dino-build-kernels
  --emulate``): the same device code run by CPU threads, on CPU tensors with stream 0, for
  the tests (``pytest -m device_emulation``) and the sanitizers. It is loaded only when asked
  for: inside ``with library.use_emulation(path):`` or with ``$DINO_FAST_KERNELS_EMULATION``
  set (``1``: the default path; else the path of the .so). The implementations' ``auto``
  choice runs CPU tensors through their CPU paths and never consults the library, so the
  emulation is never picked for training.
``device_type()`` says which target is selected ("cuda" or "cpu"); the kernels' Python glue
checks its tensors against it (``check_tensors``) and takes its device scope and stream
from here (``device_scope``, ``stream_handle``).

The loader checks, in this order, and refuses with a message that says what to do:
- (CUDA) a CUDA device is visible to torch (a CPU-only torch build or no GPU: the torch
  paths run);
- the library exists (else: the exact build command, and the log of a failed earlier build
  if there is one);
- it was built with this ``ABI_VERSION`` and from these sources (``sources_digest``, which
  covers the emulation's own files for an emulation library): a library left from other
  code is refused rather than called with the wrong signatures;
- it is a build for the selected target (an emulation library is never loaded as the CUDA
  one, nor the other way round);
- (CUDA) it holds code for this GPU's architecture (``sm_XY`` runs on ``sm_XZ``, ``Z >= Y``);
- the driver supports the CUDA runtime the library was built with (``driver_supports``).
Modules that call the library declare their own functions' ``argtypes``/``restype`` on the
returned CDLL (see ``dino_core/loss/cuda.py``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import build

if TYPE_CHECKING:
    import torch


class KernelsUnavailable(RuntimeError):
    """The kernel library cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class LibraryInfo:
    """What a built library reports about itself."""

    path: Path
    abi_version: int
    archs: tuple[str, ...]
    digest: str
    cudart_version: int  # CUDART_VERSION the library was built against, e.g. 13000

    @property
    def emulated(self) -> bool:
        """An emulation build (runs on the CPU)."""
        return self.archs == (build.EMULATION_ARCH,)


_selected_emulation: list[Path] = []  # use_emulation()'s stack


def emulation_path() -> Path | None:
    """The emulation library selected (``use_emulation``, else ``$DINO_FAST_KERNELS_EMULATION``:
    ``1`` for ``pipelines/kernels/lib/libdino_fast_kernels_emulation.so``, or a path); None
    when the CUDA library is the target."""
    if _selected_emulation:
        return _selected_emulation[-1]
    env = os.environ.get(build.ENV_EMULATION, "")
    if env in ("", "0"):
        return None
    if env == "1":
        return build.DEFAULT_OUT_DIR / build.EMULATION_LIBRARY_NAME
    return Path(env).expanduser()


@contextlib.contextmanager
def use_emulation(path: str | Path | None = None) -> Iterator[Path]:
    """Within the block, ``load()`` & co. use the CPU emulation library at ``path`` (default
    ``pipelines/kernels/lib/libdino_fast_kernels_emulation.so``): the kernels' glue then takes
    CPU tensors. For tests and verification; yields the path."""
    chosen = Path(path) if path is not None else build.DEFAULT_OUT_DIR / build.EMULATION_LIBRARY_NAME
    _selected_emulation.append(chosen)
    try:
        yield chosen
    finally:
        _selected_emulation.pop()


def device_type() -> str:
    """Where the selected library's kernels run: "cuda", or "cpu" for the emulation."""
    return "cuda" if emulation_path() is None else "cpu"


def library_path() -> Path:
    """The selected library: the emulation's (``emulation_path``) when one is selected, else
    ``$DINO_FAST_KERNELS`` when set, else ``pipelines/kernels/lib/libdino_fast_kernels.so``."""
    return emulation_path() or build.default_library_path()


def build_command(arch: str | None = None) -> str:
    """The command that builds the selected library where the loader looks."""
    if emulation_path() is not None:
        cmd = "dino-build-kernels --emulate"
        default = build.DEFAULT_OUT_DIR / build.EMULATION_LIBRARY_NAME
    else:
        cmd = f"dino-build-kernels --arch {arch or build.DEFAULT_ARCH}"
        default = build.DEFAULT_OUT_DIR / build.LIBRARY_NAME
    if library_path() != default:
        cmd += f" --out {library_path()}"
    return cmd


def driver_supports(driver: int, runtime: int) -> bool:
    """Whether a driver of CUDA version ``driver`` (``cudaDriverGetVersion``: 1000 * major +
    10 * minor, 0 without a driver) runs a library built with CUDA runtime ``runtime``: a
    driver of the same major version or newer (CUDA's minor version compatibility: a 13.x
    runtime runs on every 13.x driver, as the library holds machine code for its
    architectures and needs no PTX compiled by the driver); an older major version fails
    every call with cudaErrorInsufficientDriver."""
    return driver > 0 and driver // 1000 >= runtime // 1000


def _cuda_version(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_reason(lib: ctypes.CDLL, info: LibraryInfo) -> str | None:
    """None when the driver supports ``lib``'s runtime, else why not and what to do."""
    driver = int(lib.dino_fast_kernels_driver_version())
    runtime = info.cudart_version
    if driver_supports(driver, runtime):
        return None
    if driver <= 0:
        return (f"{info.path} needs an NVIDIA driver for CUDA {_cuda_version(runtime)}; "
                "cudaDriverGetVersion finds none")
    return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA "
            f"{_cuda_version(runtime)} runtime {info.path} was built with: install a driver "
            f"for CUDA {runtime // 1000}.x, or rebuild the library with a CUDA "
            f"{driver // 1000}.x toolkit (nvcc)")


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
        abi_version = int(lib.dino_fast_kernels_abi_version())
        if abi_version != build.ABI_VERSION:
            raise KernelsUnavailable(f"{path} has ABI version {abi_version}, this code needs "
                                     f"{build.ABI_VERSION}: re{rebuild}")
        lib.dino_fast_kernels_cudart_version.restype = ctypes.c_int
        lib.dino_fast_kernels_driver_version.restype = ctypes.c_int
        info = LibraryInfo(path, abi_version,
                           tuple(lib.dino_fast_kernels_archs().decode().split()),
                           lib.dino_fast_kernels_digest().decode(),
                           int(lib.dino_fast_kernels_cudart_version()))
    except (OSError, AttributeError) as exc:
        raise KernelsUnavailable(f"{path} is not a loadable dino-fast kernel library "
                                 f"({exc}): re{rebuild}") from exc
    try:
        digest = build.sources_digest(emulation=info.emulated)
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
def _load(path: Path, emulated: bool
          ) -> tuple[ctypes.CDLL | None, LibraryInfo | None, str | None]:
    if emulated:
        return _load_emulation(path)
    capability, no_device = _cuda_device()
    arch = f"sm_{capability[0]}{capability[1]}" if capability else None
    try:
        lib, info = open_library(path, arch)
    except KernelsUnavailable as exc:
        if no_device is not None:
            return None, None, (f"no CUDA device ({no_device}): the CUDA kernels need one. "
                                f"For a GPU machine: {exc}")
        return None, None, str(exc)
    if info.emulated:
        return None, None, (f"{path} is the CPU emulation build (tests only; "
                            f"${build.ENV_EMULATION} selects it): build the CUDA library "
                            f"with `{build_command(arch)}`")
    if no_device is not None:
        return None, info, (f"no CUDA device ({no_device}): the CUDA kernels need one; the "
                            f"library at {path} (built for {' '.join(info.archs)}) is ready "
                            "for a GPU machine")
    if not any(arch_runs_on(a, capability) for a in info.archs):
        return None, info, (f"{path} is built for {' '.join(info.archs)}, this GPU is {arch}: "
                            f"rebuild with `{build_command(arch)}`")
    reason = driver_reason(lib, info)
    return (None, info, reason) if reason else (lib, info, None)


def _load_emulation(path: Path) -> tuple[ctypes.CDLL | None, LibraryInfo | None, str | None]:
    try:
        lib, info = open_library(path)
    except KernelsUnavailable as exc:
        return None, None, f"the CPU emulation of the kernels is unavailable: {exc}"
    if not info.emulated:
        return None, None, (f"{path} is a CUDA build ({' '.join(info.archs)}), not the CPU "
                            f"emulation: build that with `{build_command()}`")
    reason = driver_reason(lib, info)  # the stand-in driver's version (settable in tests)
    return (None, info, reason) if reason else (lib, info, None)


def _selected() -> tuple[ctypes.CDLL | None, LibraryInfo | None, str | None]:
    return _load(library_path(), emulation_path() is not None)


def load() -> ctypes.CDLL:
    """The checked library of the selected target (cached per path); raises
    ``KernelsUnavailable`` saying why not."""
    lib, _, reason = _selected()
    if lib is None:
        raise KernelsUnavailable(reason)
    return lib


def info() -> LibraryInfo | None:
    """What the library at ``library_path()`` reports, when it passes the ABI and sources
    checks (whatever the device); else None."""
    return _selected()[1]


def unavailable_reason() -> str | None:
    """None when ``load()`` succeeds, else why it does not and what to do."""
    return _selected()[2]


def check_tensors(what: str, **tensors: torch.Tensor | None) -> None:
    """One ``ValueError`` naming the first of ``tensors`` (name=tensor; None is skipped) that
    is not where the selected library's kernels run: all on one CUDA device for the CUDA
    library (a raw pointer to host memory would be an illegal address there), on the CPU for
    the emulation."""
    given = [(name, t) for name, t in tensors.items() if t is not None]
    if emulation_path() is not None:
        for name, t in given:
            if t.device.type != "cpu":
                raise ValueError(f"{what}: {name} is on {t.device}; the kernel library "
                                 "selected is the CPU emulation (tests), which takes CPU tensors")
        return
    if not given:
        return
    first_name, first = given[0]
    for name, t in given:
        if t.device.type != "cuda":
            raise ValueError(f"{what}: {name} is on {t.device}; the CUDA kernels take tensors "
                             "on a CUDA device")
        if t.device != first.device:
            raise ValueError(f"{what}: {name} is on {t.device}, {first_name} on "
                             f"{first.device}: the kernels take every tensor on one device")


def device_scope(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for the CUDA library; nothing for the emulation."""
    if emulation_path() is not None:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.device(device)


def stream_handle(device: torch.device) -> int | None:
    """The raw ``cudaStream_t`` of the current stream on ``device`` (the capture stream under
    CUDA-graph capture); None (the default stream) for the emulation, whose launches are
    synchronous."""
    if emulation_path() is not None:
        return None
    import torch

    return torch.cuda.current_stream(device).cuda_stream


def clear_cache() -> None:
    """Forget earlier loads (after a rebuild, or in tests that change ``$DINO_FAST_KERNELS``)."""
    _load.cache_clear()
