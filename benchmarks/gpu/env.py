"""The GPU machine as the other figures must be read against it.

    python -m benchmarks.gpu.env env OUT.json       versions, modules, FFCV's libraries,
                                                    ceilings
    python -m benchmarks.gpu.env kernels OUT.json   the kernel library: loads, else rebuilt

``env`` records the device, driver and library versions, whether every module the check's
parts import is importable there (a missing one is named before a part fails on it), the
shared libraries the carried FFCV extension needs (``ldd``: "not found" lines name what the
machine's glibc or image lacks), and measures the two ceilings every GPU figure is compared
with (METHOD.md of the device notes): device-to-device copy bandwidth (bytes read + written
per second, 2 GiB buffers) and dense bf16 matmul throughput (8192^3 on random data). Both
are medians of event-timed repetitions after warm-up. ``kernels`` checks that the carried
kernel library loads, rebuilding it with the machine's nvcc for its GPU when it does not.
Each prints one line per entry; exits 2 without a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ..harness.timing import describe_machine


def _smi() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not found"}
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return dict(zip(fields.split(","), (v.strip() for v in out.stdout.split(","))))


def _kernel_library() -> str:
    """Whether the carried kernel library loads here; if not (another system, a stale
    build), rebuild it with this machine's nvcc for its GPU, once, and say so."""
    try:
        from pipelines.kernels import build, library
    except ImportError as exc:
        return f"not importable: {exc}"
    reason = library.unavailable_reason()
    if reason is None:
        return "loaded (carried build)"
    try:
        build.build()
    except Exception as exc:  # the log path is in the message; the other parts fall back
        return f"unavailable: {reason}; rebuilding here failed: {exc}"
    library.clear_cache()
    again = library.unavailable_reason()
    return (f"rebuilt here ({reason})" if again is None
            else f"unavailable after a rebuild here: {again}")


# What the check's parts import, beyond the standard library (a part fails on the first
# one missing; this names them all at once).
MODULES = ("torch", "numpy", "numba", "PIL", "yaml", "psutil", "tqdm", "matplotlib",
           "tensorboard", "pytest", "skimage", "sklearn", "ffcv", "cv2", "nvidia.dali")


def modules() -> dict[str, str]:
    """{module: version, or why it does not import}."""
    import importlib
    found = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- a report, whatever the failure
            found[name] = f"MISSING ({type(exc).__name__}: {str(exc)[:120]})"
        else:
            found[name] = str(getattr(module, "__version__", "ok"))
    return found


def ffcv_libraries() -> str:
    """``ldd`` of the FFCV extension that imports here: its unresolved libraries, or ok."""
    import importlib.util
    spec = importlib.util.find_spec("ffcv")
    if spec is None or spec.origin is None:
        return "ffcv not installed"
    exts = sorted(Path(spec.origin).parent.glob("_libffcv*.so"))
    if not exts:
        return f"no _libffcv*.so next to {Path(spec.origin).parent}"
    out = subprocess.run(["ldd", str(exts[0])], capture_output=True, text=True, timeout=30)
    bad = [ln.strip() for ln in out.stdout.splitlines() if "not found" in ln]
    return f"{exts[0].name}: " + ("; ".join(bad) if bad else "every library resolves")


def _median_ms(fn, reps: int) -> float:
    """Median event-timed milliseconds of ``fn`` (synchronised once at the end)."""
    for _ in range(3):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, stop in events:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()  # host sync: read the events
    times = sorted(s.elapsed_time(e) for s, e in events)
    return times[len(times) // 2]


def ceilings() -> dict:
    n = 1 << 30  # 2 GiB of bf16 per buffer
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), 10)
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = _median_ms(lambda: a @ b, 10)
    return {"copy_GBps": 2 * (2 * n) / copy_ms / 1e6, "bf16_matmul_TFLOPs":
            2 * 8192 ** 3 / mm_ms / 1e9, "copy_ms": copy_ms, "matmul_ms": mm_ms}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("env", "kernels"):
        print("usage: python -m benchmarks.gpu.env env|kernels [OUT.json]", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_env: no CUDA GPU on this machine", file=sys.stderr)
        return 2
    if args[0] == "kernels":
        info = {"kernel_library": _kernel_library(), "nvcc": shutil.which("nvcc") or "absent"}
    else:
        info = {"machine": dataclasses.asdict(describe_machine("cuda")),
                "nvidia_smi": _smi(), "cpu_count": os.cpu_count(), "modules": modules(),
                "ffcv_libraries": ffcv_libraries(), "ceilings": ceilings()}
    for key, value in info.items():
        print(f"{key}: {value}")
    if len(args) > 1:
        Path(args[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(args[1]).write_text(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
