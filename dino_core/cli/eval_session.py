"""The run every frozen-backbone evaluation command shares: device, process group, backbone.

``eval_session`` resolves ``--device`` (a rank's own GPU under torchrun), joins the process
group when launched with several processes, loads the backbone named by the checkpoint
options through ``eval_common.load_cli_backbone`` (the one place evaluation commands read
weights), prints one line saying what runs where (rank 0), and leaves the group afterwards.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .eval_common import add_checkpoint_args, load_cli_backbone


@dataclass(frozen=True)
class EvalSession:
    backbone: torch.nn.Module
    device: torch.device
    is_main: bool
    world_size: int


def protocol_parser(prog: str, description: str, epilog: str,
                    checkpoint_required: bool = False) -> argparse.ArgumentParser:
    """A parser whose --help shows the description and epilog as written, with the checkpoint
    options (optional when features can be loaded instead)."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, required=checkpoint_required)
    return p


def add_dump_args(parser: argparse.ArgumentParser, files: str, load: bool = True) -> None:
    """--dump-features (and --load-features) naming the files they hold."""
    parser.add_argument("--dump-features", metavar="DIR",
                        help=f"save the extracted features here ({files})")
    if load:
        parser.add_argument("--load-features", metavar="DIR",
                            help="use features saved by --dump-features (no checkpoint needed)")


@contextmanager
def eval_session(prog: str, args: argparse.Namespace, data: str) -> Iterator[EvalSession]:
    """The backbone on this rank's device, inside the process group (left on exit)."""
    from dino_core.parallel.env import detect_env, init_distributed, shutdown
    from dino_core.train.run import resolve_device

    if not args.checkpoint:
        alternative = " (or --load-features DIR)" if hasattr(args, "load_features") else ""
        raise ValueError(f"give --checkpoint CKPT{alternative}")
    device = resolve_device(args.device, detect_env().local_rank)
    env = init_distributed(device.type)
    try:
        backbone, ck = load_cli_backbone(args, device)
        if env.is_main:
            print(f"{prog}: {ck.kind} checkpoint {ck.source} ({ck.name}, {args.checkpoint_key})"
                  f", data {data}, device {device}, {env.world_size} process(es)", flush=True)
        yield EvalSession(backbone, device, env.is_main, env.world_size)
    finally:
        shutdown()
