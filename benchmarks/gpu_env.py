"""The GPU machine as the other figures must be read against it: ``python -m benchmarks.gpu_env
OUT.json``.

Records the device, driver, library versions and whether the project's kernel library loads
(rebuilding it here with nvcc when the carried build does not),
and measures the two ceilings every GPU figure is compared with (METHOD.md of the device
notes): device-to-device copy bandwidth (bytes read + written per second, 2 GiB buffers)
and dense bf16 matmul throughput (8192^3 on random data). Both are medians of event-timed
repetitions after warm-up. Prints one line per entry; exits 2 without a GPU.
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

from .harness import describe_machine


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
    if not torch.cuda.is_available():
        print("gpu_env: no CUDA GPU on this machine", file=sys.stderr)
        return 2
    info = {"machine": dataclasses.asdict(describe_machine("cuda")), "nvidia_smi": _smi(),
            "cpu_count": os.cpu_count(), "kernel_library": _kernel_library(),
            "nvcc": shutil.which("nvcc") or "absent"}
    info["ceilings"] = ceilings()
    for key, value in info.items():
        print(f"{key}: {value}")
    if args:
        Path(args[0]).parent.mkdir(parents=True, exist_ok=True)
        Path(args[0]).write_text(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
