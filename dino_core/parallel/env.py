"""Distributed set-up in one place: torchrun / SLURM detection, process group, rank-0 I/O.

torchrun (single- or multi-node, c10d rendezvous) sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. Under SLURM without torchrun (``srun python -m ...``) the ranks
come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the master address from the first
host of SLURM_JOB_NODELIST (MASTER_PORT defaults to 29500). Anything else is one process.
NCCL on GPUs, gloo on CPUs. What runs on top of the group (DDP, FSDP) is a parallel strategy
(``strategy.py``).
"""
from __future__ import annotations

import datetime
import gc
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single process"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``node[03-05,9],gpu1`` -> ``node03``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]),
                       int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                       int(env.get("SLURM_LOCALID", 0)), "slurm")
    return DistEnv()


def init_distributed(device_kind: str) -> DistEnv:
    """Detect the launcher and join the process group (no-op for one process)."""
    env = detect_env()
    if not env.distributed or dist.is_initialized():
        return env
    if env.source == "slurm":
        os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ.get(
            "SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", "127.0.0.1"))))
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(env.rank), str(env.world_size)
        os.environ["LOCAL_RANK"] = str(env.local_rank)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(env.local_rank)
    # torchrun's store outlives an elastic restart: without a per-attempt prefix the new
    # processes would read the dead ones' addresses and fail to connect.
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"dino-fast/attempt{attempt}", store)
    # device_id binds this rank's NCCL communicator to its GPU at start-up (eager init),
    # instead of guessing the device at the first collective.
    device_id = torch.device("cuda", env.local_rank) if device_kind == "cuda" else None
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30), device_id=device_id)
    return env


def init_alone(device_kind: str) -> None:
    """A process group of this one process (an in-memory store, no network), for code that
    needs one even alone (FSDP's device mesh); a no-op when a group exists."""
    if dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo",
                            store=dist.HashStore(), rank=0, world_size=1)


def _flag_device() -> torch.device:
    """Where a small tensor for a collective lives: the GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(ok: bool) -> bool:
    """True on every rank when ``ok`` is True on every rank (one all-reduce; host sync)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())  # host sync: checkpoint loading only


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` (picklable plain data and tensors) as a list on rank 0, None on
    the others."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def shutdown() -> None:
    """Destroy the process group, after anything that holds it (``Run.release``) is gone:
    a cycle through a DDP module is collected here, while the group is still registered,
    so the reducer never drops the group's last reference (see ``Run.release``)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (a no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t
