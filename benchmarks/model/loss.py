"""``dino-bench loss``: DINO loss forward+backward time and peak extra memory per implementation.

Implementations, all measured in the same run on the same inputs:
- ``reference``: the paper's pair loop (one log-softmax per pair; the baseline);
- ``einsum``: one log-softmax for all views and one einsum over all pairs (plain autograd);
- ``fused``: one softmax per view, closed-form backward (``dino_core.loss.fused``);
- ``fused (overwrite logits)``: ``overwrite_logits=True``: the student logits are the
  loss's buffer (one softmax, written over them in the forward; the gradient over that in
  the backward): what the trainer runs;
- ``cuda`` and ``cuda (overwrite logits)``: the CUDA kernels (GPU only, when the kernel
  library loads: ``dino-build-kernels``).

Each timed call is teacher softmax + loss forward + backward to the student logits (the
center EMA, one column sum shared by all, is left out). Inputs: logits ~ N(0, 1), teacher
temperature 0.04, student temperature 0.1. An overwriting call destroys its logits, so
before each one an untimed setup restores them from the pristine input into a buffer
allocated once (in training the head writes fresh logits there anyway). Timing: the
implementations interleaved over several rounds so that machine noise falls on all of them
alike; median and spread of the per-call times.
- CPU: ``harness.time_fn`` (warm-up, then ``perf_counter`` per call).
- GPU: each call is captured once in a CUDA graph (after eager warm-up calls on a side
  stream) and replayed; a pair of CUDA events brackets each replay of the call (a restoring
  setup is its own graph, replayed before the start event), so launch gaps and Python are
  not what is measured.

Bytes moved per call come from a stated model (``loss_model.py``) and are reported next to
the floor (student logits in, teacher logits in, gradient out) with the achieved GB/s
(modelled bytes / median time).

Peak extra memory (bytes above what was allocated before the call; it includes the
``[views*B, K]`` gradient every implementation must return):
- GPU: ``torch.cuda.max_memory_allocated`` (via ``harness.PeakMemory``).
- CPU: torch's CPU allocator reports no peak, so each implementation runs once in a fresh
  subprocess: a small warm-up call loads the kernels, then the peak resident set size
  (Linux ``VmHWM``, reset just before) of one full-size call minus the resident set size
  just before it. glibc is
  told to map every block over 128 KiB directly (``MALLOC_MMAP_THRESHOLD_``), so freed
  tensors leave the resident set at once and the peak is the live memory's peak.

    python3 -m benchmarks.model.loss                  # B=32 on CPU / 64 on GPU, 12 views, K=65536
    python3 -m benchmarks.model.loss --quick          # a smoke run in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass

import psutil
import torch

from ..harness.timing import (BenchmarkResult, PeakMemory, PlotSpec, describe_machine, resolve_device,
                      summarize, time_fn, write_results)
from ..harness.graph_timing import CapturedCall
from .loss_calls import IMPLS, Call, make_inputs, step_fn, unavailable
from .loss_model import OVERWRITE, Shapes, bytes_moved, floor_bytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 2.0 ** 20


# ----------------------------------------------------------------------------- memory
def cpu_peak_extra_bytes(impl: str, batch: int, views: int, out_dim: int,
                         dtype: torch.dtype) -> int:
    """Peak resident-set growth of one call of ``impl``, measured in a fresh subprocess."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "benchmarks.model.loss", "--memory-probe", impl, "--batch",
           str(batch), "--views", str(views), "--out-dim", str(out_dim), "--dtype",
           str(dtype).replace("torch.", ""), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {impl} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def _vm_hwm_bytes() -> int | None:
    """This process's peak resident set (``VmHWM`` in /proc/self/status), None if unknown."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, flags=re.M)
    return int(match.group(1)) * 1024 if match else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_probe(impl: str, batch: int, views: int, out_dim: int, dtype: torch.dtype) -> int:
    """Run in the subprocess: warm up small, then one full-size call; its peak RSS growth.

    The peak is VmHWM reset right before the call. (``ru_maxrss`` is no use here: Linux
    carries the parent's high-water mark into a child across fork and exec.)
    """
    cpu = torch.device("cpu")
    small = make_inputs(cpu, 2, views, 64, dtype)
    step_fn(impl, *small, views)()
    student, teacher, center = make_inputs(cpu, batch, views, out_dim, dtype)
    del small
    step = step_fn(impl, student, teacher, center, views)  # overwrite: allocates its logits
    if step.setup is not None:
        step.setup()
    before = psutil.Process().memory_info().rss
    if not _reset_peak_rss() or _vm_hwm_bytes() is None:
        raise RuntimeError("peak RSS needs Linux /proc/self/clear_refs and VmHWM")
    step.run()
    return max(0, _vm_hwm_bytes() - before)


def gpu_peak_extra_bytes(step: Call, device: torch.device) -> int:
    if step.setup is not None:
        step.setup()
    with PeakMemory(device) as mem:
        step.run()
    return mem.extra


# ----------------------------------------------------------------------------- benchmark
FLOOR = "gradient write (floor)"  # allocate and write one [views*B, K] tensor


def agreement(steps: dict[str, Call], student: torch.Tensor
              ) -> dict[str, tuple[float, float]]:
    """(loss, gradient) relative error of each implementation against the reference."""
    ref_loss = steps["reference"]().double()
    ref_grad = student.grad.detach().double()
    out = {}
    for impl, step in steps.items():
        loss = step().double()
        grad_err = (student.grad.double() - ref_grad).abs().max() / ref_grad.abs().max()
        out[impl] = (((loss - ref_loss).abs() / ref_loss.abs()).item(), grad_err.item())
    student.grad = None
    return out


def interleaved_samples(fns: dict[str, Call], device: torch.device, iters: int,
                        rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per-call seconds of each function: ``rounds`` rounds, every function timed in each,
    so slow phases of a shared machine fall on all of them alike. GPU: replays of CUDA
    graphs captured once per function (``graph_timing.py``)."""
    per_round = max(1, -(-iters // rounds))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    graphs = ({name: CapturedCall.capture(fn.run, fn.setup, warmup) for name, fn in fns.items()}
              if device.type == "cuda" else {})
    for r in range(rounds):
        for name, fn in fns.items():
            if name in graphs:
                samples[name].extend(graphs[name].replay_times(device, per_round))
                continue
            timing = time_fn(fn.run, device, warmup=warmup if r == 0 else 0,
                             iters=per_round, setup=fn.setup)
            samples[name].extend(timing.samples)
    return samples


def run_loss_benchmark(device: torch.device | str, batch: int, views: int, out_dim: int,
                       iters: int, dtype: torch.dtype, rounds: int = 5, warmup: int = 2,
                       memory: bool = True) -> list[dict]:
    """Time (and measure memory of) every implementation on the same inputs.

    Returns one row per implementation in ``IMPLS``: ``time_*_ms`` (median, IQR, min, max,
    n), ``speedup_vs_reference`` (reference median / this median), ``peak_extra_mib``,
    ``memory_ratio_vs_reference`` (reference peak / this peak), ``working_mib`` and
    ``working_ratio_vs_reference`` (the same without the student gradient),
    ``loss_rel_diff`` and ``grad_rel_diff`` (error against the reference, relative to its
    largest value), ``model_mb`` (modelled bytes moved per call, ``loss_model.py``),
    ``floor_mb`` (the loss's floor: logits and teacher in, gradient out),
    ``model_vs_floor`` and ``achieved_gb_per_s`` (modelled bytes / median time), or a
    ``status`` saying why it did not run; then a ``FLOOR`` row: the time to allocate and
    write a gradient-sized tensor, which every implementation pays.
    """
    device = torch.device(device)
    student, teacher, center = make_inputs(device, batch, views, out_dim, dtype)
    runnable = [i for i in IMPLS if unavailable(i, device) is None]
    steps = {i: step_fn(i, student, teacher, center, views) for i in runnable}
    checks = agreement(steps, student)
    floor = {FLOOR: Call(lambda: torch.empty_like(student).fill_(1.0))}
    samples = interleaved_samples({**steps, **floor}, device, iters, rounds, warmup)
    student.grad = None

    peaks: dict[str, int] = {}
    if memory:
        for impl in runnable:
            peaks[impl] = (gpu_peak_extra_bytes(steps[impl], device) if device.type == "cuda"
                           else cpu_peak_extra_bytes(impl, batch, views, out_dim, dtype))
            student.grad = None
    grad_bytes = student.numel() * student.element_size()
    # An in-place row's gradient lies in its logits, allocated before the call: nothing of
    # its peak is the returned gradient, so nothing is subtracted.
    working = {i: max(peak - (0 if i.endswith(OVERWRITE) else grad_bytes), 1)
               for i, peak in peaks.items()}

    ref_median = summarize(samples["reference"]).median
    shapes = Shapes(batch, views, out_dim, dtype)
    rows = []
    for impl in (*IMPLS, FLOOR):
        reason = unavailable(impl, device) if impl != FLOOR else None
        if reason is not None:
            rows.append({"impl": impl, "status": f"not run: {reason}"})
            continue
        timing = summarize(samples[impl])
        row = {"impl": impl, "status": "ok", **timing.as_row("time")}
        if impl != FLOOR:
            row["speedup_vs_reference"] = ref_median / timing.median
        moved = grad_bytes if impl == FLOOR else bytes_moved(impl, shapes)
        row.update(model_mb=moved / 1e6, floor_mb=floor_bytes(shapes) / 1e6,
                   model_vs_floor=moved / floor_bytes(shapes),
                   achieved_gb_per_s=moved / timing.median / 1e9)
        if impl in peaks:
            row.update(peak_extra_mib=peaks[impl] / MIB,
                       memory_ratio_vs_reference=peaks["reference"] / max(peaks[impl], 1),
                       working_mib=working[impl] / MIB,
                       working_ratio_vs_reference=working["reference"] / working[impl])
        if impl in checks:
            row.update(loss_rel_diff=checks[impl][0], grad_rel_diff=checks[impl][1])
        rows.append(row)
    return rows


COLUMNS = ["threads", "impl", "status", "time_median_ms", "time_iqr_ms", "time_min_ms",
           "time_max_ms", "time_n", "speedup_vs_reference", "peak_extra_mib",
           "memory_ratio_vs_reference", "working_mib", "working_ratio_vs_reference",
           "model_mb", "floor_mb", "model_vs_floor", "achieved_gb_per_s", "loss_rel_diff",
           "grad_rel_diff"]


def build_result(rows: list[dict], device: torch.device, config: dict,
                 argv: list[str]) -> BenchmarkResult:
    notes = [
        "time: teacher softmax + loss forward + backward to the student logits, per call; "
        "median over the timed calls after warm-up, IQR and min-max for the spread. " + (
            "GPU: replays of one CUDA graph per implementation, CUDA events around each "
            "replay." if device.type == "cuda" else "CPU: perf_counter around each call."),
        "model_mb: bytes read + written per call by the model of benchmarks/model/loss_model.py "
        "(torch paths: each op reads its inputs and writes its outputs once, a lower bound; "
        "CUDA kernels: each logit, teacher logit and gradient value once, re-reads from "
        "shared memory or L2 not counted); floor_mb: student and teacher logits read once, "
        "gradient written once; achieved_gb_per_s: model_mb / median time. The "
        f"'{FLOOR}' row's model_mb is the write of one gradient-sized tensor.",
        "peak_extra_mib: peak memory above the level before the call, including the "
        "[views*B, K] student gradient. working_mib: the same minus that gradient's size "
        "(the memory an implementation needs beyond its inputs and its output). " + (
            "GPU: torch.cuda.max_memory_allocated." if device.type == "cuda" else
            "CPU: peak resident set (VmHWM, reset before the call) of one call in a fresh "
            "subprocess per implementation minus the resident set just before it "
            "(MALLOC_MMAP_THRESHOLD_=131072)."),
        "loss_rel_diff / grad_rel_diff: agreement with the reference in this run "
        "(max |diff| / max |reference|).",
        f"'fused {OVERWRITE}': the loss works in the student logits (one softmax per row, "
        "written over them in the forward; the gradient over that in the backward), so its "
        "peak_extra_mib lacks the [views*B, K] gradient tensor: it is what a training step "
        "holds (dino_core.train.step never reads the logits after the loss), not a figure for "
        "callers that keep their logits, whose row is 'fused'. Its working_mib is its whole "
        "peak (no separate gradient to subtract). Before each of its calls an untimed setup "
        "restores the logits the previous call overwrote.",
        f"'{FLOOR}': allocating and writing one tensor of the gradient's size, timed in the "
        "same rounds: a part of every out-of-place implementation's time that none of them "
        "can avoid.",
        "inputs: logits ~ N(0, 1), teacher temperature 0.04, student temperature 0.1.",
    ]
    if device.type != "cuda":
        notes.append("GPU figures are not measured in this file (CPU run).")
    return BenchmarkResult(what="loss", title="DINO loss: time and memory per implementation",
                           machine=describe_machine(device, argv),
                           baseline="the reference pair loop (impl=reference) in the same run",
                           rows=rows, columns=COLUMNS, notes=notes, config=config)


# One bar per (threads, implementation): time and peak extra memory.
LOSS_PLOT = PlotSpec(x="impl", group=("threads", "impl"), kind="bar",
                     panels=(("time per call (ms, median)", ("time_median_ms",)),
                             ("peak extra memory (MiB)", ("peak_extra_mib",))))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 -m benchmarks.model.loss",
        description="DINO loss forward+backward time and peak extra memory of the reference "
                    "pair loop, an einsum formulation, the fused loss and the CUDA kernels, "
                    "in one run. Writes <machine>_<yyyymm>_loss.{json,csv,md,png}.")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    p.add_argument("--batch", type=int, help="per-view batch B (default 32 CPU, 64 GPU)")
    p.add_argument("--views", type=int, default=12, help="student views (default 12)")
    p.add_argument("--out-dim", type=int, help="prototypes K (default 65536)")
    p.add_argument("--iters", type=int, help="timed calls per implementation "
                   "(default 20 CPU, 200 GPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"),
                   help="logits dtype (default float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed calls "
                   "are split into (default 5)")
    p.add_argument("--threads", type=int, nargs="+", help="torch CPU thread counts to measure "
                   "in turn, e.g. 2 1 (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    p.add_argument("--quick", action="store_true", help="B=4, K=4096, 4 iterations: a smoke run")
    p.add_argument("--output-dir", default=str(RESULTS_DIR), help="where results are written")
    p.add_argument("--memory-probe", choices=IMPLS, help=argparse.SUPPRESS)  # subprocess mode
    return p.parse_args(argv)


@dataclass(frozen=True)
class LossBenchShape:
    """What one run measures; ``resolve`` fills what the command line left unset."""

    batch: int
    out_dim: int
    iters: int
    dtype: torch.dtype

    @classmethod
    def resolve(cls, device: torch.device, quick: bool, batch: int | None = None,
                out_dim: int | None = None, iters: int | None = None,
                dtype: str | None = None) -> "LossBenchShape":
        """Defaults: B=64 bf16 on a GPU (the goal's shape), B=32 fp32 on the CPU, K=65536;
        200 timed graph replays on a GPU, 20 calls on the CPU; --quick: B=4, K=4096, 4."""
        gpu = device.type == "cuda"
        return cls(batch=batch or (4 if quick else (64 if gpu else 32)),
                   out_dim=out_dim or (4096 if quick else 65536),
                   iters=iters or (4 if quick else (200 if gpu else 20)),
                   dtype=getattr(torch, dtype) if dtype else
                   (torch.bfloat16 if gpu else torch.float32))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = resolve_device(args.device)
    shape = LossBenchShape.resolve(device, args.quick, args.batch, args.out_dim, args.iters,
                                   args.dtype)
    batch, out_dim, dtype = shape.batch, shape.out_dim, shape.dtype
    if args.memory_probe:
        if args.threads:
            torch.set_num_threads(args.threads[0])
        extra = _memory_probe(args.memory_probe, batch, args.views, out_dim, dtype)
        print(json.dumps({"impl": args.memory_probe, "peak_extra_bytes": extra}))
        return
    iters = shape.iters
    thread_counts = args.threads or [torch.get_num_threads()]
    config = dict(batch=batch, views=args.views, out_dim=out_dim, iters=iters,
                  dtype=str(dtype).replace("torch.", ""), rounds=args.rounds,
                  threads=" ".join(map(str, thread_counts)))
    rows, default_threads = [], torch.get_num_threads()
    for threads in thread_counts:  # ratios are taken within one thread count
        torch.set_num_threads(threads)
        rows += [{"threads": threads, **row} for row in run_loss_benchmark(
            device, batch, args.views, out_dim, iters, dtype, rounds=args.rounds,
            memory=not args.no_memory)]
    torch.set_num_threads(default_threads)
    result = build_result(rows, device, config, ["python3 -m benchmarks.model.loss", *argv])
    paths = write_results(result, args.output_dir, LOSS_PLOT, tensorboard=False)
    print(Path(paths["md"]).read_text())


if __name__ == "__main__":
    main()
