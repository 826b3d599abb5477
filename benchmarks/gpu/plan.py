"""The GPU window as a plan of device calls, most valuable first.

A lent GPU comes for 15 minutes of machine time in all: the machine's start (a minute or
more), every call's transfers and every idle wait count, one call carries at most 64 MiB,
and what comes back is at most 8 files. So the check (``gpu_check.py``'s parts) is cut
into CALLS, each one command of at most ``CALL_MAX_S``, run back to back on the warm
machine:

    core     env (versions, modules, FFCV's libraries) + the kernel library (carried, else
             rebuilt there) + the GPU tests + compute-sanitizer memcheck/racecheck on one
             loss and one photometric launch + loss and photometric timings + the ViT-S/16
             step and its MFU
    ffcv     the ImageNet-like corpus and its .beton, the FFCV pipeline, a short e2e run
             (images/s, data-wait share from CUDA events), the patch curve (ViT-S and ViT-B
             at patch 16, 14, 8)
    dali-1..4  only when >= DALI_MIN_LEFT_S of the window is left after the two above:
             DALI travels in four parts (one per call); the last unpacks it and runs the
             DALI parts. Otherwise DALI waits for the next window.

``python -m benchmarks.gpu.plan`` prints the plan: for each call, the ``carry`` list and the
command to give the device tool. Each command writes the check to a folder of its own and
packs it into ``$OUT/<call>.tgz`` with ``$OUT/<call>-summary.md`` beside it (two files back
per call). ``tests/benchmarks/gpu/test_gpu_plan.py`` holds every call's time boxes against its
budget and the window's.

A later window runs only what is missing: committed summaries
(``benchmarks/results/<gpu>_<date>_gpu_summary.json``) name the parts that already ran ok
on that GPU, and ``--skip-done benchmarks/results`` skips them (``env`` always runs).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

WINDOW_S = 900          # a lent session's device time, the machine's start included
START_S = 120           # a machine's start: "a minute or more" (device tool README)
CALL_OVERHEAD_S = 25    # per call: the tree and the carry there, $OUT back
CALL_MAX_S = 300        # one call's command (its timeout_s), about 5 minutes
PACK_S = 10             # packing $OUT at the end of a call
DALI_MIN_LEFT_S = 300   # DALI's calls start only with this much of the window left


@dataclass(frozen=True)
class Call:
    """One device call: the parts it runs (``gpu_check.PARTS`` names, in order), its
    command's time limit, what it carries, and the shell step before the check (staging a
    DALI part). ``optional`` calls run only when ``DALI_MIN_LEFT_S`` of the window is left."""

    name: str
    what: str
    parts: tuple[str, ...]
    timeout_s: int
    carry: tuple[str, ...] = ()
    stage: str = ""
    stage_s: int = 0        # what ``stage`` may take (unpacking DALI: tens of seconds)
    optional: bool = False

    @property
    def check_budget_s(self) -> int:
        """What the check itself may take: the command's limit less staging and packing."""
        return self.timeout_s - self.stage_s - PACK_S

    def command(self) -> str:
        """The command for the device tool's ``run`` (from the repository root there)."""
        steps = [self.stage] if self.stage else []
        if self.parts:
            steps.append(f"tools/gpu_check.sh /tmp/gpu-{self.name} --parts "
                         f"{' '.join(self.parts)} --budget-s {self.check_budget_s} "
                         f"--skip-done benchmarks/results --pack \"$OUT\" "
                         f"--pack-name {self.name}")
        return " && ".join(steps) if steps else "true"


_KERNELS = "pipelines/kernels/lib"
_FFCV = ".carry/ffcv"

CALLS: tuple[Call, ...] = (
    Call("core", "kernels, GPU tests, sanitizers, loss, photometric, ViT-S/16 step",
         ("env", "kernels", "tests", "sanitize", "loss", "photometric", "step"), CALL_MAX_S,
         (_KERNELS, _FFCV)),
    Call("ffcv", "ImageNet-like corpus, FFCV pipeline, e2e, patch curve",
         ("corpus", "pipeline", "e2e", "patch"), CALL_MAX_S, (_KERNELS, _FFCV)),
    Call("dinov2", "the DINOv2 recipe's step next to DINO's (the patch loss's cost)",
         ("step-dinov2",), 90, (_KERNELS,)),
    *(Call(f"dali-{k}", f"stage DALI part {k}", (), 60, (f".carry/dali-{k}",),
           f"tools/gpu_dali_part.sh {k}", stage_s=20, optional=True) for k in (1, 2, 3)),
    Call("dali-4", "stage DALI part 4, unpack, DALI corpus, tests, pipeline, e2e",
         ("dali-corpus", "dali-tests", "dali-pipeline", "dali-e2e"), CALL_MAX_S,
         (".carry/dali-4", _KERNELS), "tools/gpu_dali_part.sh 4", stage_s=45, optional=True),
)


def call(name: str) -> Call:
    for c in CALLS:
        if c.name == name:
            return c
    raise SystemExit(f"unknown call {name!r}; calls: {', '.join(c.name for c in CALLS)}")


def window_use(calls: tuple[Call, ...]) -> int:
    """Device seconds ``calls`` may take at most, back to back from a cold start."""
    return START_S + sum(c.timeout_s + CALL_OVERHEAD_S for c in calls)


def problems() -> list[str]:
    """Why the plan would not fit a window (empty when it does)."""
    from .check import PARTS
    boxes = {p.name: p.timeout_s for p in PARTS}
    found = []
    for c in CALLS:
        unknown = [p for p in c.parts if p not in boxes]
        if unknown:
            found.append(f"call {c.name}: unknown parts {unknown}")
            continue
        if c.timeout_s > CALL_MAX_S:
            found.append(f"call {c.name}: {c.timeout_s} s is over the {CALL_MAX_S} s per call")
        total = sum(boxes[p] for p in c.parts)
        if total > c.check_budget_s:
            found.append(f"call {c.name}: its parts' time boxes add up to {total} s, over its "
                         f"check budget of {c.check_budget_s} s")
    planned = [p for c in CALLS for p in c.parts]
    if sorted(planned) != sorted(boxes):
        found.append(f"parts in no call or in two: {sorted(set(boxes) ^ set(planned))} "
                     f"{sorted(p for p in planned if planned.count(p) > 1)}")
    required = tuple(c for c in CALLS if not c.optional)
    if window_use(required) > WINDOW_S:
        found.append(f"the required calls take up to {window_use(required)} s of a "
                     f"{WINDOW_S} s window")
    return found


def dali_fits(used_s: float) -> bool:
    """Whether the DALI calls start after ``used_s`` device seconds of the window."""
    return WINDOW_S - used_s >= DALI_MIN_LEFT_S


def render() -> str:
    required = tuple(c for c in CALLS if not c.optional)
    left = WINDOW_S - window_use(required)
    lines = [f"GPU window plan: {WINDOW_S} s of device time, start ~{START_S} s, "
             f"~{CALL_OVERHEAD_S} s of transfers per call; at most {window_use(required)} s "
             "for the required calls.", ""]

    def describe(c: Call) -> list[str]:
        return [f"- {c.name} ({c.what}), timeout_s={c.timeout_s}",
                f"    carry: {list(c.carry)}", f"    command: {c.command()}"]

    for c in required:
        lines += describe(c)
    lines += ["", f"Then only with >= {DALI_MIN_LEFT_S} s of the window left ({left} s after "
              "the calls above at their limits; parts measured in an earlier window are "
              "skipped, so a later window has room), back to back:"]
    for c in CALLS:
        if c.optional:
            lines += describe(c)
    found = problems()
    lines += ["", "plan check: " + ("ok" if not found else "; ".join(found))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m benchmarks.gpu.plan",
        description="Print the plan of device calls for a lent GPU window (carry lists and "
                    "commands); exits 1 when the plan does not fit its budgets.").parse_args(argv)
    print(render())
    return 1 if problems() else 0


if __name__ == "__main__":
    sys.exit(main())
