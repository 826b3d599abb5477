"""The host twin of the CUDA photometric kernel: the kernel's own header, built with a C++
compiler, run on CPU tensors.

``csrc/photometric_host.cpp`` runs the phases of ``csrc/photometric_tile.cuh`` (the tiles,
halos, clamped edges, stores and the per-pixel math of ``photometric.cuh``) one block after
another with a single thread. It is compiled on first use into a cache folder
(``$DINO_FAST_CACHE/photometric``, default ``~/.cache/dino-fast/photometric``), named by a
digest of the sources, the compiler and its flags, so an edit rebuilds it; a failed build
names its log. Used by the tests (against the numba kernel and the torch ops on every CPU
machine, and as the CUDA kernel's reference on a GPU) and by the benchmark's CPU smoke run;
training on the CPU uses the numba kernel.

    from pipelines.photometric import host_twin
    out = host_twin.finish(crops, rows, spec)          # [N, 3, S, S] in spec.output_dtype
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..spec import AugmentationSpec
from . import kernel_abi
from .constants import kernel_consts

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE = CSRC / "photometric_host.cpp"
FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off",
         "-Wall", "-Wextra")
PREFIX = "dino_photometric_host_"


class HostTwinUnavailable(RuntimeError):
    """The twin cannot be built or loaded here; the message says why."""


def compiler() -> str | None:
    """``$CXX``, else g++, else c++ (None when there is none)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def cache_dir() -> Path:
    root = os.environ.get("DINO_FAST_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dino-fast"
    return base / "photometric"


def _digest(cxx: str) -> str:
    h = hashlib.sha256(" ".join((cxx, *FLAGS)).encode())
    for path in sorted([SOURCE, *CSRC.glob("*.cuh"), *CSRC.glob("*.h")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def library_path() -> Path:
    """Where the twin of these sources is (or will be) built."""
    cxx = compiler()
    if cxx is None:
        raise HostTwinUnavailable("no C++ compiler found (install g++ or set CXX)")
    return cache_dir() / f"libphotometric_host-{_digest(cxx)}.so"


def build(path: Path) -> Path:
    """Compile the twin to ``path`` (through a temporary file, renamed: a concurrent loader
    never sees half a library); the compiler's output goes to ``<path>.log``."""
    cxx = compiler()
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=path.parent) as tmp:
        partial = Path(tmp) / path.name
        cmd = [cxx, *FLAGS, str(SOURCE), "-o", str(partial)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise HostTwinUnavailable(f"could not run {cxx}: {exc}") from exc
        log.write_text(f"$ {' '.join(cmd)}\n\n{proc.stdout}{proc.stderr}"
                       f"\n[exit status {proc.returncode}]\n")
        if proc.returncode != 0:
            raise HostTwinUnavailable(f"building the photometric host twin failed ({cxx} exit "
                                      f"status {proc.returncode}); the compiler's output is "
                                      f"in {log}")
        os.replace(partial, path)
    return path


@functools.cache
def _library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        build(path)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise HostTwinUnavailable(f"{path} does not load: {exc}") from exc


@functools.cache
def load() -> kernel_abi.Abi:
    """The twin's bound functions, built on first use; ``HostTwinUnavailable`` says why not."""
    try:
        return kernel_abi.bind(_library(), PREFIX)
    except kernel_abi.AbiMismatch as exc:
        raise HostTwinUnavailable(str(exc)) from exc


def unavailable_reason() -> str | None:
    """None when the twin loads (building it if needed), else why not."""
    try:
        load()
    except HostTwinUnavailable as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=8)
def _constants(spec: AugmentationSpec) -> kernel_abi.Constants:
    return kernel_abi.constants(kernel_consts(spec))


def finish_many(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], spec: AugmentationSpec,
                dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Each (crops uint8 [N, S, S, 3], rows [N, WIDTH]) CPU batch -> [N, 3, S, S] in ``dtype``
    (default: the spec's output dtype), all batches in one call of the twin."""
    abi = load()
    const = _constants(spec)
    if const.max_radius > abi.max_radius:
        raise ValueError(f"blur_sigma up to {spec.blur_sigma[1]} needs a blur radius of "
                         f"{const.max_radius}; the kernel is compiled for {abi.max_radius}")
    for crops, rows in batches:
        kernel_abi.check_views(crops, rows, "host_twin.finish")
        if crops.device.type != "cpu":
            raise ValueError(f"host_twin.finish takes CPU tensors, got {crops.device}")
    out_dtype = dtype or getattr(torch, spec.output_dtype)
    return kernel_abi.finish_batches(abi, batches, const, out_dtype)


def finish(crops: torch.Tensor, rows: torch.Tensor, spec: AugmentationSpec,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """One batch of same-size views: see ``finish_many``."""
    return finish_many([(crops, rows)], spec, dtype)[0]


def convert(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The header's float32 -> float16 / bfloat16 rounding, on CPU float32 ``values`` (tests)."""
    load()  # built and checked
    fn = _library().dino_photometric_host_convert
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int]
    fn.restype = ctypes.c_int
    src = values.to(torch.float32).contiguous()
    out = torch.empty(src.shape, dtype=dtype)
    code = fn(src.data_ptr(), out.data_ptr(), src.numel(), kernel_abi.OUT_CODES[dtype])
    if code != 0:
        raise ValueError(f"convert: {dtype} is not a 16-bit output dtype")
    return out
