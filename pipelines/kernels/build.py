"""Build the project's CUDA kernels ahead of time into ONE shared library with a C interface.

    dino-build-kernels                       # the visible GPU's architecture, else sm_90
    dino-build-kernels --arch sm_90 sm_80    # a fat library for several GPU generations
    python -m pipelines.kernels.build --out /opt/dino/libdino_fast_kernels.so
    dino-build-kernels --emulate             # the CPU emulation (g++ only), for tests
    DINO_EMULATION_SANITIZE=thread dino-build-kernels --emulate   # ... under TSan

Every ``.cu`` file in ``SOURCES`` (paths relative to the folder that holds ``dino_core/``) is
compiled by nvcc, with the CUDA runtime linked statically, into ``libdino_fast_kernels.so``:
plain ``extern "C"`` functions taking raw pointers, sizes and a ``cudaStream_t`` as ``void*``,
loaded at run time with ctypes (``library.py``). No torch header and no compiler is needed at
run time. Besides the kernels, the library exports what the loader checks before use:

    int         dino_fast_kernels_abi_version(void)     ABI_VERSION below
    const char* dino_fast_kernels_archs(void)           e.g. "sm_90 sm_80"; "emulation"
    const char* dino_fast_kernels_digest(void)          sources_digest() of the sources built
    int         dino_fast_kernels_cudart_version(void)  CUDART_VERSION built against (13000)
    int         dino_fast_kernels_driver_version(void)  cudaDriverGetVersion() now (0: none)

The CPU emulation (``--emulate``, ``build_emulation``): g++ builds the same kernel sources as
C++ against the stand-in CUDA headers of ``emulation/`` (one OS thread per CUDA thread; see
``emulation/include/dino_emulation/device.h``) into ``libdino_fast_kernels_emulation.so``,
with the same C interface and info functions (archs "emulation"). It runs the device code on
the CPU for the tests (``pytest -m device_emulation``) and the sanitizers:
``DINO_EMULATION_SANITIZE=address`` (ASan + UBSan) or ``=thread`` (TSan) builds
``libdino_fast_kernels_emulation-address.so`` / ``-thread.so``. The loader uses it only when
asked (``library.use_emulation`` or ``$DINO_FAST_KERNELS_EMULATION``), never for training.

A build writes the compiler's full output next to the library
(``libdino_fast_kernels.build.log``); a failed build names that log and leaves any previous
library in place (the new one is written to a temporary file and renamed over it).

This file uses the standard library only: ``setup.py`` runs it at install time, before torch
may be installed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when an exported function's signature or meaning changes: the loader refuses a
# library built with another version. 2: the cudart and driver version functions.
ABI_VERSION = 2
LIBRARY_NAME = "libdino_fast_kernels.so"
EMULATION_LIBRARY_NAME = "libdino_fast_kernels_emulation.so"
EMULATION_ARCH = "emulation"  # the archs an emulation library reports
ENV_LIBRARY = "DINO_FAST_KERNELS"  # run time: the path of the .so to load instead
ENV_EMULATION = "DINO_FAST_KERNELS_EMULATION"  # run time: load the emulation ("1" or a path)
ENV_SANITIZE = "DINO_EMULATION_SANITIZE"  # build time: "address" or "thread"
PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent.parent  # holds dino_core/ (and pipelines/)
DEFAULT_OUT_DIR = PACKAGE_DIR / "lib"  # git-ignored
DEFAULT_ARCH = "sm_90"
TARGET_INCLUDE = PACKAGE_DIR / "csrc"  # device_target.h: what differs between the targets
EMULATION_DIR = PACKAGE_DIR / "emulation"
EMULATION_SOURCES = (EMULATION_DIR / "runtime.cpp", EMULATION_DIR / "scheduler.cpp")

# The kernel sources, relative to ROOT. Adding a kernel to the library is one line here.
SOURCES: tuple[str, ...] = (
    "dino_core/loss/csrc/dino_loss_kernel.cu",
    "dino_core/loss/csrc/patch_ce_kernel.cu",
    "pipelines/photometric/csrc/photometric_kernel.cu",
)

NVCC_FLAGS = ("-O3", "-std=c++17", "-shared", "-cudart", "static", "-Xcompiler", "-fPIC",
              "-Xcompiler", "-fvisibility=hidden", "-Xlinker", "--exclude-libs,ALL",
              "-I", str(TARGET_INCLUDE))
# The emulation: C++20 (std::atomic_ref), the stand-in headers first on the include path, the
# device it stands for (__CUDA_ARCH__ 900: the sm_90 paths, clusters included); nvcc's
# `#pragma unroll` is unknown to g++.
EMULATION_FLAGS = ("-std=c++20", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread",
                   "-DDINO_EMULATION", "-D__CUDA_ARCH__=900", "-I", str(EMULATION_DIR / "include"),
                   "-I", str(TARGET_INCLUDE), "-Wall", "-Wextra", "-Wno-unknown-pragmas",
                   "-Wno-sign-compare")
SANITIZE_FLAGS = {
    None: ("-O2",),
    "address": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all"),
    "thread": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=thread"),
}
HEADER_SUFFIXES = (".h", ".cuh")


class BuildError(RuntimeError):
    """The library could not be built; the message says why and names the log if any."""


def default_library_path() -> Path:
    """Where the loader looks: ``$DINO_FAST_KERNELS``, else ``DEFAULT_OUT_DIR``."""
    env = os.environ.get(ENV_LIBRARY)
    return Path(env).expanduser() if env else DEFAULT_OUT_DIR / LIBRARY_NAME


def log_path(library: Path) -> Path:
    """The build log kept next to ``library``."""
    return library.with_name(library.name.removesuffix(".so") + ".build.log")


def source_paths(sources: tuple[str | Path, ...] = SOURCES) -> list[Path]:
    """Absolute paths of ``sources``; a missing one is a ``BuildError`` naming it."""
    paths = [Path(s) if Path(s).is_absolute() else ROOT / s for s in sources]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BuildError(f"kernel source {missing[0]} does not exist (listed in SOURCES of "
                         f"{Path(__file__).resolve()})")
    return paths


def sources_digest(sources: tuple[str | Path, ...] = SOURCES, emulation: bool = False) -> str:
    """A digest of the sources, of the headers beside them (``.h``, ``.cuh``) and of
    ``TARGET_INCLUDE``'s; with ``emulation``, of the emulation's stand-in headers and runtime
    too. A library whose digest differs was built from other code and must be rebuilt."""
    files: set[Path] = set()
    for src in source_paths(sources):
        files.add(src)
        files.update(p for p in src.parent.iterdir() if p.suffix in HEADER_SUFFIXES)
    files.update(p for p in TARGET_INCLUDE.glob("*") if p.suffix in HEADER_SUFFIXES)
    if emulation:
        files.update(p for p in EMULATION_DIR.rglob("*") if p.suffix in (*HEADER_SUFFIXES, ".cpp"))
    # Named by file name (emulation files by their path in EMULATION_DIR), not by location:
    # the same sources elsewhere (an installed wheel) have the same digest.
    entries = sorted(((f.relative_to(EMULATION_DIR) if f.is_relative_to(EMULATION_DIR)
                       else Path(f.name)).as_posix(), f.read_bytes()) for f in files)
    h = hashlib.sha256()
    for name, data in entries:
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def parse_arch(arch: str) -> str:
    """``sm_90`` / ``sm_90a`` / ``90`` / ``9.0`` -> ``sm_90`` (``sm_90a``); else a BuildError."""
    text = arch.strip().lower()
    match = re.fullmatch(r"(?:sm_)?(\d+)\.?(\d)([af]?)", text)
    if match is None:
        raise BuildError(f"bad architecture {arch!r}: expected sm_<major><minor>, e.g. sm_90 "
                         "(H100/H200), sm_80 (A100), sm_89 (L4/L40/RTX 40xx), sm_86 (A10/RTX 30xx)")
    return f"sm_{match.group(1)}{match.group(2)}{match.group(3)}"


def visible_gpu_archs() -> list[str]:
    """The architectures of the GPUs ``nvidia-smi`` lists (empty without a GPU or driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        proc = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    caps = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    try:
        return sorted(parse_arch(c) for c in caps)
    except BuildError:
        return []


def default_archs() -> list[str]:
    """The visible GPUs' architectures, else ``[DEFAULT_ARCH]``."""
    return visible_gpu_archs() or [DEFAULT_ARCH]


def find_nvcc() -> Path:
    """nvcc from ``$CUDA_HOME`` (or ``$CUDA_PATH``) when set, else ``PATH``, else
    ``/usr/local/cuda``. A set ``CUDA_HOME`` without ``bin/nvcc`` is an error, not skipped."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            nvcc = Path(home) / "bin" / "nvcc"
            if not nvcc.is_file():
                raise BuildError(f"{var}={home} has no bin/nvcc: point it at the CUDA "
                                 "toolkit's folder, or unset it to use nvcc from PATH")
            return nvcc
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    fallback = Path("/usr/local/cuda/bin/nvcc")
    if fallback.is_file():
        return fallback
    raise BuildError("nvcc (the CUDA compiler) was not found: put it on PATH or set CUDA_HOME "
                     "to the CUDA toolkit's folder")


def _info_source(archs: list[str], digest: str, abi_version: int) -> str:
    """The C source of the functions the loader checks (the module docstring lists them)."""
    return (
        "#include <cuda_runtime.h>\n"
        "#define EXPORT extern \"C\" __attribute__((visibility(\"default\")))\n"
        f"EXPORT int dino_fast_kernels_abi_version(void) {{ return {int(abi_version)}; }}\n"
        f"EXPORT const char* dino_fast_kernels_archs(void) {{ return \"{' '.join(archs)}\"; }}\n"
        f"EXPORT const char* dino_fast_kernels_digest(void) {{ return \"{digest}\"; }}\n"
        "EXPORT int dino_fast_kernels_cudart_version(void) { return CUDART_VERSION; }\n"
        "EXPORT int dino_fast_kernels_driver_version(void) {\n"
        "  int version = 0;\n"
        "  return cudaDriverGetVersion(&version) == cudaSuccess ? version : -1;\n"
        "}\n")


def emulation_library_name(sanitize: str | None = None) -> str:
    """``libdino_fast_kernels_emulation.so``, or its ``-address`` / ``-thread`` variant."""
    if sanitize is None:
        return EMULATION_LIBRARY_NAME
    return EMULATION_LIBRARY_NAME.removesuffix(".so") + f"-{sanitize}.so"


def resolve_output(out: str | Path | None, name: str = LIBRARY_NAME) -> Path:
    """``--out``: a ``.so`` path, or a folder that receives ``name``; None: the path the
    loader looks at (``default_library_path``) for the CUDA library, ``DEFAULT_OUT_DIR`` for
    another ``name``."""
    if out is None:
        return default_library_path() if name == LIBRARY_NAME else DEFAULT_OUT_DIR / name
    path = Path(out).expanduser()
    return path if path.suffix == ".so" else path / name


def _compile(cmd: list[str], library: Path, compiler: str,
             first: tuple[list[str], ...] = ()) -> Path:
    """Run the commands ``first`` side by side (e.g. one compilation per source), then
    ``cmd`` (whose output goes to ``-o <temporary>``, the last argument), and rename its
    output over ``library``; the full output of all is kept in ``log_path(library)``."""
    log = log_path(library)

    def run(c: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
        try:
            return c, subprocess.run(c, capture_output=True, text=True)
        except OSError as exc:
            raise BuildError(f"could not run {c[0]}: {exc}") from exc

    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        done = list(pool.map(run, first))
    if all(proc.returncode == 0 for _, proc in done):
        done.append(run(cmd))
    log.write_text("\n".join(f"$ {' '.join(c)}\n\n{proc.stdout}{proc.stderr}"
                             f"\n[exit status {proc.returncode}]\n" for c, proc in done))
    failed = [proc for _, proc in done if proc.returncode != 0]
    if failed:
        errors = [ln for ln in (failed[0].stdout + failed[0].stderr).splitlines()
                  if "error" in ln]
        first_error = f"; first error: {errors[0].strip()}" if errors else ""
        raise BuildError(f"building {library} failed ({compiler} exit status "
                         f"{failed[0].returncode}){first_error}\nThe compiler's full output "
                         f"is in {log}")
    os.replace(Path(cmd[-1]), library)  # atomic: a loader never sees a half-written library
    return library


def build(archs: list[str] | None = None, out: str | Path | None = None,
          sources: tuple[str | Path, ...] = SOURCES, extra_flags: tuple[str, ...] = (),
          abi_version: int = ABI_VERSION) -> Path:
    """Compile ``sources`` for ``archs`` into one shared library at ``out``; return its path.

    ``archs``: e.g. ``["sm_90"]`` (default: ``default_archs()``). Raises ``BuildError`` (no
    nvcc, a missing source, a bad architecture, or a compiler failure naming the log).
    """
    archs = sorted({parse_arch(a) for a in (archs or default_archs())})
    paths = source_paths(sources)
    nvcc = find_nvcc()
    library = resolve_output(out).resolve()
    library.parent.mkdir(parents=True, exist_ok=True)
    gencode = [f for a in archs for f in ("-gencode", f"arch=compute_{a[3:]},code={a}")]
    with tempfile.TemporaryDirectory(prefix=".build-", dir=library.parent) as tmp:
        info = Path(tmp) / "library_info.cu"
        info.write_text(_info_source(archs, sources_digest(sources), abi_version))
        cmd = [str(nvcc), *NVCC_FLAGS, *gencode, *extra_flags, *map(str, paths), str(info),
               "-o", str(Path(tmp) / library.name)]
        return _compile(cmd, library, "nvcc")


def find_cxx() -> str:
    """``$CXX``, else g++, else c++; a ``BuildError`` when there is none."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise BuildError("no C++ compiler found: install g++ or set CXX")
    return cxx


def sanitizer(value: str | None = None) -> str | None:
    """``value`` (default ``$DINO_EMULATION_SANITIZE``): None, "address" or "thread"."""
    value = os.environ.get(ENV_SANITIZE) if value is None else value
    if value in (None, "", "none"):
        return None
    if value not in SANITIZE_FLAGS:
        raise BuildError(f"{ENV_SANITIZE}={value!r}: expected 'address' (ASan + UBSan) or "
                         "'thread' (TSan)")
    return value


def build_emulation(out: str | Path | None = None, sanitize: str | None = None,
                    sources: tuple[str | Path, ...] = SOURCES,
                    extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile ``sources`` for the CPU emulation with g++ (no nvcc) into one shared library at
    ``out`` (default ``DEFAULT_OUT_DIR / emulation_library_name(sanitize)``); return its path.

    ``sanitize``: None, "address" or "thread" (default ``$DINO_EMULATION_SANITIZE``). Same
    log and errors as ``build``; the info functions report archs "emulation" and a digest
    over the sources and the emulation (``sources_digest(emulation=True)``).
    """
    sanitize = sanitizer(sanitize)
    paths = [*source_paths(sources), *EMULATION_SOURCES]
    cxx = find_cxx()
    library = resolve_output(out, emulation_library_name(sanitize)).resolve()
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=library.parent) as tmp:
        info = Path(tmp) / "library_info.cpp"
        info.write_text(_info_source([EMULATION_ARCH], sources_digest(sources, emulation=True),
                                     ABI_VERSION))
        flags = [*EMULATION_FLAGS, *SANITIZE_FLAGS[sanitize], *extra_flags]
        objects = [Path(tmp) / f"{i}-{src.stem}.o" for i, src in enumerate([*paths, info])]
        compiles = tuple([cxx, *flags, "-c", "-x", "c++", str(src), "-o", str(obj)]
                         for src, obj in zip([*paths, info], objects))
        link = [cxx, *flags, *map(str, objects), "-o", str(Path(tmp) / library.name)]
        return _compile(link, library, Path(cxx).name, first=compiles)


def build_host(sources: tuple[str | Path, ...], out: str | Path,
               extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile C++ ``sources`` (host twins of kernels, for tests) into a shared library at
    ``out`` with ``$CXX`` (default g++); same log and errors as ``build``."""
    paths = source_paths(sources)
    cxx = find_cxx()
    library = Path(out).resolve()
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=library.parent) as tmp:
        cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", *extra_flags,
               *map(str, paths), "-o", str(Path(tmp) / library.name)]
        return _compile(cmd, library, Path(cxx).name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dino-build-kernels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compile dino-fast's CUDA kernels (the DINO loss; other kernels as they are added)\n"
            "into one shared library, libdino_fast_kernels.so, loaded at run time with ctypes.\n"
            "No compiler and no torch headers are needed when training: only this library.\n\n"
            "When to run it: `pip install` builds the library when nvcc is on PATH; run this\n"
            "after installing on a machine whose nvcc was not found then, after editing a .cu\n"
            "file (the loader refuses a library built from other sources), or to build for\n"
            "another GPU. Without the library, the loss runs its fused torch path and says why\n"
            "in one log line.\n\n"
            "--emulate builds the CPU emulation instead (g++ only, no nvcc, no GPU): the same\n"
            "kernel sources run by CPU threads, for the tests (pytest -m device_emulation) and\n"
            f"the sanitizers (${ENV_SANITIZE}=address or =thread). Training never uses it."),
        epilog=(
            "architectures (--arch): the GPU's compute capability as sm_<major><minor>:\n"
            "  sm_90  H100, H200, GH200        sm_80  A100, A30\n"
            "  sm_89  L4, L40, RTX 40xx        sm_86  A10, A40, RTX 30xx\n"
            "Code for sm_XY also runs on sm_XZ with Z >= Y (same major). Each extra\n"
            "architecture adds compile time; list only the GPUs you train on.\n\n"
            f"at run time: the loader reads ${ENV_LIBRARY} (the .so's path) when set, else\n"
            f"{DEFAULT_OUT_DIR / LIBRARY_NAME}.\n"
            "nvcc is taken from $CUDA_HOME/bin, else PATH, else /usr/local/cuda/bin.\n"
            "A failed build keeps the compiler's full output in libdino_fast_kernels.build.log\n"
            "next to the output and leaves any previous library untouched.\n\n"
            f"emulation (--emulate): {DEFAULT_OUT_DIR / EMULATION_LIBRARY_NAME} by default,\n"
            f"-address.so / -thread.so with ${ENV_SANITIZE}; the compiler is $CXX, else g++.\n"
            f"The loader uses it inside library.use_emulation(...) or with ${ENV_EMULATION}=1\n"
            "(or =the .so's path); CONTRIBUTING.md says how to run the sanitizers."))
    p.add_argument("--arch", nargs="+", metavar="SM",
                   help="target architectures, e.g. sm_90 (default: the visible GPU's, else "
                        f"{DEFAULT_ARCH})")
    p.add_argument("--out", help="output .so path, or a folder for libdino_fast_kernels.so "
                                 f"(default: ${ENV_LIBRARY} when set, else "
                                 f"{DEFAULT_OUT_DIR / LIBRARY_NAME})")
    p.add_argument("--emulate", action="store_true",
                   help="build the CPU emulation with g++ (tests and sanitizers; no --arch)")
    return p.parse_args(argv)


def _main_emulation(args: argparse.Namespace) -> int:
    if args.arch:
        print("dino-build-kernels: --arch does not apply to --emulate (it stands for sm_90)",
              file=sys.stderr)
        return 2
    try:
        sanitize = sanitizer()
        path = build_emulation(args.out, sanitize)
    except BuildError as exc:
        print(f"dino-build-kernels: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}: the CPU emulation{f' under {sanitize} sanitizers' if sanitize else ''}"
          f" (compiler output: {log_path(path)})")
    print(f"tests use it with {ENV_EMULATION}={path} (pytest -m device_emulation)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.emulate:
        return _main_emulation(args)
    try:
        archs = args.arch or default_archs()
        path = build(archs, args.out)
    except BuildError as exc:
        print(f"dino-build-kernels: {exc}", file=sys.stderr)
        return 1
    print(f"built {path} for {' '.join(sorted({parse_arch(a) for a in archs}))} "
          f"(compiler output: {log_path(path)})")
    if args.out is not None and path != default_library_path().resolve():
        print(f"the loader looks at {default_library_path()}: set {ENV_LIBRARY}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
