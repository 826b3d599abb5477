"""The project's CUDA kernels, built ahead of time into one shared library with a C interface.

``build.py`` compiles every kernel source (``build.SOURCES``) with nvcc into
``libdino_fast_kernels.so`` (``dino-build-kernels``; ``pip install`` runs it when nvcc is
present); ``library.py`` loads it with ctypes and checks that it fits this code and this GPU.
No compiler and no torch headers are involved at run time.

``csrc/device_target.h`` holds what differs between the two targets of the same sources: the
GPU (nvcc) and the CPU emulation (``emulation/``: stand-in CUDA headers and runtime, g++,
``dino-build-kernels --emulate``), on which the kernels' device code runs, with one OS
thread per CUDA thread, for the tests marked ``device_emulation`` and under ASan/UBSan and
TSan (CONTRIBUTING.md, "The CUDA kernels"). Training never loads the emulation.
"""
from __future__ import annotations

__all__ = ["KernelsUnavailable", "library_path", "load", "unavailable_reason"]


def __getattr__(name: str):
    # Lazy, so that `python -m pipelines.kernels.build` does not import the loader first.
    if name in __all__:
        from . import library
        return getattr(library, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
