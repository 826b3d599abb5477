"""``dino-bench step --parallel ddp,fsdp [--activation-checkpointing]``: the project's DINO
step under each parallel strategy, side by side, on ``world_size`` ranks.

Every configuration (strategy x activation checkpointing off/on) starts its own ranks (one
process per GPU, NCCL; on the CPU 2 processes, gloo, the cores split between them), builds
the DINO recipe's models as training does (``dino_core.train.run``: checkpointing the
student's blocks, then the strategy's wrap, then AdamW over the plain student), and times
``dino_core.train.step.TrainStep`` on a synthetic per-rank batch (``StepShape``), past the
last-layer freeze. Reported per configuration:

- images/s over all ranks (``batch * world_size`` / rank 0's median step time: the
  collectives keep the ranks in step);
- ``held_mb_per_rank``: the parameter and optimizer-state bytes a rank holds, counted
  from its tensors (``TrainStep.held_bytes``: its shards under FSDP), the largest rank;
- ``peak_mem_mb_per_rank``: the largest rank's peak memory over the timed steps
  (``torch.cuda.max_memory_allocated`` on a GPU; peak resident set size on the CPU, which
  includes the interpreter and libraries);
- ``step_tensors_mb_per_rank`` (CPU): the peak of the tensors one step creates
  (``harness.memory.TensorPeak``, in an extra untimed step), where activation
  checkpointing shows.

A configuration that fails records its reason in ``status`` and the others still run.
"""
from __future__ import annotations

import json
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..harness.memory import TensorPeak
from ..harness.report import BenchmarkResult, PlotSpec, write_results
from ..harness.timing import PeakMemory, describe_machine
from .trainstep import StepShape, bench_config, failure_status, snap, steady_values, \
    synthetic_batch, time_within

PARALLEL = ("ddp", "fsdp")
PLOT = PlotSpec(x="config", panels=(("images/s", ("images_per_s",)),
                                    ("MiB per rank", ("held_mb_per_rank",
                                                      "step_tensors_mb_per_rank",
                                                      "peak_mem_mb_per_rank"))),
                group=("arch",), kind="bar")


@dataclass(frozen=True)
class Job:
    """One configuration, as every rank of it receives it."""

    arch: str
    patch: int
    shape: StepShape
    parallel: str
    checkpointing: bool
    precision: str
    device: str            # cpu | cuda
    world_size: int
    warmup: int
    iters: int
    seconds: float | None
    threads: int           # per rank (CPU)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, job: Job, port: int, out: str) -> None:
    """One rank of ``job``: build, time, write ``out/rank<r>.json`` (or the failure)."""
    import torch.distributed as dist

    from dino_core.models.checkpointing import checkpoint_blocks
    from dino_core.parallel.ddp import DDPStrategy
    from dino_core.parallel.env import DistEnv
    from dino_core.parallel.fsdp import FSDPStrategy
    from dino_core.recipes import build_recipe
    from dino_core.train.optim import build_optimizer
    from dino_core.train.step import TrainStep

    torch.set_num_threads(job.threads)
    device = torch.device("cuda", rank) if job.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=job.world_size)
    result: dict = {}
    try:
        env = DistEnv(rank, job.world_size, rank, "dino-bench")
        strategy = (FSDPStrategy(env, job.precision) if job.parallel == "fsdp"
                    else DDPStrategy(env))
        cfg = bench_config(job.arch, job.patch, job.shape)
        recipe = build_recipe(cfg)
        torch.manual_seed(0)
        student, teacher = recipe.build_models(img_size=snap(job.shape.global_res, job.patch))
        if job.checkpointing:
            checkpoint_blocks(student)
        student, teacher = strategy.wrap(student, teacher, device)
        recipe.to(device)
        optimizer = build_optimizer(strategy.unwrap(student), "adamw", device)
        step = TrainStep(recipe, student, teacher, optimizer, device, job.precision,
                         strategy=strategy)
        batch = synthetic_batch(job.shape.synthetic_views(device))
        values = steady_values(cfg, recipe, step.freeze_last_layer)
        counter = iter(range(1 << 62))
        run = lambda: step(batch, values(next(counter)))  # noqa: E731
        with PeakMemory(device) as mem:
            bounded = time_within(run, device, job.warmup, job.iters, job.seconds)
        t = bounded.timing
        result = {"median_s": t.median, **t.as_row("step_s"), "held": step.held_bytes(),
                  "peak": mem.peak, "warmup_s": bounded.warmup_s}
        if device.type == "cpu":  # one more step, untimed, every op counted
            with TensorPeak() as created:
                run()
            result["step_tensors"] = created.peak
    except Exception as err:  # noqa: BLE001 - recorded in the row, the sweep goes on
        result = {"status": failure_status(job.parallel, err)}
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def measure(job: Job) -> dict:
    """The row of ``job``: its ranks started and joined here."""
    import torch.multiprocessing as mp

    row = {"arch": job.arch, "parallel": job.parallel,
           "activation_checkpointing": job.checkpointing,
           "config": job.parallel + ("+ckpt" if job.checkpointing else ""),
           "world_size": job.world_size, "batch_per_rank": job.shape.batch,
           "precision": job.precision, "status": "ok"}
    with tempfile.TemporaryDirectory() as out:
        try:
            mp.spawn(_rank, args=(job, _free_port(), out), nprocs=job.world_size, join=True)
        except Exception as err:  # noqa: BLE001 - a rank that died (out of memory, ...)
            row["status"] = failure_status(job.parallel, err)
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
    failed = [r["status"] for r in ranks if "status" in r]
    if failed or len(ranks) < job.world_size:
        row["status"] = failed[0] if failed else row["status"]
        return row
    first = ranks[0]
    row.update({"images_per_s": job.shape.batch * job.world_size / first["median_s"],
                **{k: v for k, v in first.items() if k.startswith("step_s")},
                "held_mb_per_rank": max(r["held"] for r in ranks) / 2**20,
                "peak_mem_mb_per_rank": max(r["peak"] for r in ranks) / 2**20,
                "step_tensors_mb_per_rank": max(r.get("step_tensors", 0) for r in ranks) / 2**20
                or None,
                "warmup_s": first["warmup_s"]})
    return row


def run_parallel_step_benchmark(parallel: tuple[str, ...] = PARALLEL,
                                checkpointing: bool = False, device: str = "auto",
                                archs: tuple[str, ...] | None = None, patch: int = 16,
                                batch: int | None = None, world_size: int | None = None,
                                iters: int | None = None, seconds: float | None = None,
                                precision: str = "auto", quick: bool = False,
                                output_dir: str = "benchmarks/results",
                                argv: list[str] | None = None) -> BenchmarkResult:
    """One row per architecture x strategy x (checkpointing off, and on if asked).

    GPU: every visible GPU a rank, ViT-S/16 and ViT-B/16 at 64 images per rank, 2x224 +
    10x96, K=65536, bf16, about ``seconds`` (default 5) of timed steps. CPU: 2 ranks,
    ViT-Tiny at 8 images per rank, 2x64 + 4x32, K=4096, fp32, a few steps.
    """
    from dino_core.train.step import resolve_precision

    from ..harness.timing import resolve_device

    unknown = set(parallel) - set(PARALLEL)
    if unknown:
        raise ValueError(f"--parallel: unknown {sorted(unknown)}; choose from {PARALLEL}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if quick or dev.type == "cpu":
        archs = archs or ("vit_tiny",)
        shape = StepShape(batch=batch or 8, global_res=64, local_res=32, n_local=4, out_dim=4096)
        world = world_size or 2
        iters, warmup = iters or (2 if quick else 5), 1
        threads = max(1, torch.get_num_threads() // world)
    else:
        archs = archs or ("vit_small", "vit_base")
        shape = StepShape(batch=batch or 64)
        world = world_size or torch.cuda.device_count()
        iters, warmup = iters or 200, 3
        seconds = 5.0 if seconds is None else seconds
        threads = max(1, torch.get_num_threads() // world)
    rows = []
    for arch in archs:
        for mode in parallel:
            for ckpt in ((False, True) if checkpointing else (False,)):
                job = Job(arch, patch, shape, mode, ckpt, prec, dev.type, world, warmup, iters,
                          seconds, threads)
                row = measure(job)
                print(f"[step --parallel] {arch} {row['config']}: "
                      f"{row.get('images_per_s', 0):.1f} img/s ({row['status']})", flush=True)
                rows.append(row)
    result = BenchmarkResult(
        what="step_parallel",
        title="DINO training step per parallel strategy: images/s and memory per rank",
        machine=describe_machine(dev, argv), baseline="ddp rows of the same run",
        rows=rows, columns=["arch", "config", "world_size", "batch_per_rank", "precision",
                            "images_per_s", "step_s_median_ms", "step_s_iqr_ms", "step_s_n",
                            "held_mb_per_rank", "peak_mem_mb_per_rank",
                            "step_tensors_mb_per_rank", "warmup_s", "status"],
        config={"shape": asdict(shape), "patch": patch, "world_size": world, "iters": iters,
                "seconds": seconds, "warmup": warmup, "threads_per_rank": threads},
        notes=[f"{world} ranks ({'NCCL, one GPU each' if dev.type == 'cuda' else 'gloo on the CPU, '}"
               f"{'' if dev.type == 'cuda' else f'{threads} thread(s) each'}), "
               f"{shape.batch} images per rank: {shape.n_global}x{shape.global_res} + "
               f"{shape.n_local}x{shape.local_res}, K={shape.out_dim}, synthetic inputs.",
               "images_per_s: all ranks' images over rank 0's median step time.",
               "held_mb_per_rank: parameters + AdamW state a rank holds, from its tensors "
               "(FSDP: its shards); the largest rank.",
               "peak_mem_mb_per_rank: the largest rank's peak over the timed steps: "
               "torch.cuda.max_memory_allocated on a GPU, peak resident set size (the whole "
               "process: interpreter, libraries, tensors) on the CPU.",
               "step_tensors_mb_per_rank (CPU): the most bytes that tensors created by one "
               "step (activations, gradients, gathered parameters, temporaries) held at once, "
               "counted op by op (benchmarks/harness/memory.py) in an extra untimed step; the "
               "largest rank.",
               "+ckpt: --activation-checkpointing (the student's blocks recomputed in the "
               "backward)."])
    write_results(result, output_dir, PLOT)
    return result


def parse_parallel(text: str) -> tuple[str, ...]:
    """``ddp,fsdp`` -> ("ddp", "fsdp")."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or set(names) - set(PARALLEL):
        raise ValueError(f"--parallel takes a comma list of {', '.join(PARALLEL)}, got {text!r}")
    return names
