"""compute-sanitizer over the project's two CUDA kernels, one small launch each.

    python -m benchmarks.gpu.sanitize OUT.json             every (tool, kernel) run, a table
    python -m benchmarks.gpu.sanitize --launch loss        one launch (what the tool runs)
    python -m benchmarks.gpu.sanitize OUT.json --dry-run   the runs it would make (CPU)

memcheck finds out-of-bounds and misaligned accesses, racecheck shared-memory hazards
(a missing ``__syncthreads``): what the CPU emulation of the kernels cannot see with the
real hardware's memory and scheduling. The shapes are small, so racecheck (which slows a
launch by orders of magnitude) finishes in seconds, yet they take each kernel's multi-block
paths: the loss with a cluster of 4 blocks per sample (bf16, K = 16384) plus its backward,
the photometric finish with both view sizes of a batch and a blur (two launches).
Each run is ``compute-sanitizer --tool T --error-exitcode 7 python -m benchmarks.gpu.sanitize
--launch K``; a run is clean when it exits 0 and the tool reports "0 errors" / "0 hazards".
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("memcheck", "racecheck")
KERNELS = ("loss", "photometric")
RUN_TIMEOUT_S = 60


def launch_loss() -> None:
    import torch

    from dino_core.loss.cuda import cuda_dino_loss

    gen = torch.Generator(device="cuda").manual_seed(0)
    views, batch, dim = 4, 2, 16384
    student = torch.randn(views * batch, dim, device="cuda", generator=gen,
                          dtype=torch.bfloat16).requires_grad_()
    teacher = torch.randn(2 * batch, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    center = torch.zeros(1, dim, device="cuda")
    loss = cuda_dino_loss(student, teacher, center, 0.04, views, 0.1)
    (2.0 * loss).backward()  # upstream != 1: the rescale kernel runs too
    torch.cuda.synchronize()  # host sync: errors of the launches surface here
    assert torch.isfinite(loss).item() and torch.isfinite(student.grad).all().item()


def launch_photometric() -> None:
    import torch

    from pipelines.photometric.cuda import finish_many
    from pipelines.spec import AugmentationSpec

    spec = AugmentationSpec()
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = []
    for count, size in ((2, 224), (2, 96)):
        crops = torch.randint(0, 256, (count, size, size, 3), device="cuda", generator=gen,
                              dtype=torch.uint8)
        batches.append((crops, every_op_rows(count, size, spec).cuda()))
    outs = finish_many(batches, spec)
    torch.cuda.synchronize()  # host sync: errors of the launches surface here
    assert all(torch.isfinite(o.float()).all().item() for o in outs)


def every_op_rows(count: int, size: int, spec):
    """Parameter rows ``[count, WIDTH]`` that switch every op on (jitter in a non-default
    order, grayscale, the spec's widest blur, solarize): every branch of the fused kernel."""
    import torch

    from pipelines.sampling.draw import JitterParams, ViewParams
    from pipelines.sampling.param_row import to_rows
    view = ViewParams((0, 0, size, size), False, JitterParams((3, 1, 0, 2), 1.2, 0.8, 1.1, 0.05),
                      True, spec.blur_sigma[1], True)
    return torch.from_numpy(to_rows([view] * count))


LAUNCHES = {"loss": launch_loss, "photometric": launch_photometric}


def sanitizer_command(tool: str, kernel: str) -> list[str]:
    return ["compute-sanitizer", "--tool", tool, "--error-exitcode", "7", "--print-limit",
            "20", sys.executable, "-m", "benchmarks.gpu.sanitize", "--launch", kernel]


def run_all(dry_run: bool) -> list[dict]:
    runs = []
    for tool in TOOLS:
        for kernel in KERNELS:
            cmd = sanitizer_command(tool, kernel)
            if dry_run:
                runs.append({"tool": tool, "kernel": kernel, "status": "dry run",
                             "command": " ".join(cmd)})
                continue
            start = time.monotonic()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      timeout=RUN_TIMEOUT_S)
                out = proc.stdout + proc.stderr
                status = "clean" if proc.returncode == 0 else f"FAILED (rc {proc.returncode})"
            except subprocess.TimeoutExpired:
                out, status = "", f"timed out after {RUN_TIMEOUT_S} s"
            summary = [ln for ln in out.splitlines() if "ERROR SUMMARY" in ln
                       or "RACECHECK SUMMARY" in ln]
            runs.append({"tool": tool, "kernel": kernel, "status": status,
                         "seconds": round(time.monotonic() - start, 1),
                         "summary": summary[-1] if summary else out.strip()[-300:]})
            print(f"{tool:<10} {kernel:<12} {status:<18} {runs[-1]['summary']}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.sanitize",
                                description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, help="JSON file for the runs' results")
    p.add_argument("--launch", choices=KERNELS, help="run one launch (under the sanitizer)")
    p.add_argument("--dry-run", action="store_true", help="list the runs; run nothing")
    args = p.parse_args(argv)
    if args.launch:
        LAUNCHES[args.launch]()
        return 0
    if not args.dry_run and shutil.which("compute-sanitizer") is None:
        print("gpu_sanitize: compute-sanitizer is not on PATH", file=sys.stderr)
        return 2
    runs = run_all(args.dry_run)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=1))
    return 0 if all(r["status"] in ("clean", "dry run") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
