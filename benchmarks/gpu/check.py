"""``dino-bench gpu OUTDIR``: check and measure every GPU part of the project in one command.

Made for a lent GPU machine with minutes, not hours: each part runs in its own process with
its own time box (one hang cannot eat the rest), parts whose prerequisites are missing are
skipped with the reason, and a one-screen summary is printed last and written to
``OUTDIR/summary.md`` (``summary.json`` for tools). Logs go to ``OUTDIR/logs/<part>.log``,
result files (JSON/CSV/MD/PNG of each benchmark) to ``OUTDIR/results/``.

    env          GPU, driver, library versions, every module the parts import, the
                 libraries of the carried FFCV extension (ldd); the two ceilings (device
                 copy GB/s, bf16 matmul TFLOP/s) the other figures are read against
    kernels      the kernel library: the carried build, else rebuilt there with nvcc
    tests        ``pytest -m gpu``: kernels against their twins, the step, the loaders
    sanitize     compute-sanitizer memcheck and racecheck on one loss and one photometric
                 launch (``gpu_sanitize.py``)
    loss         DINO loss: reference loop, fused torch, CUDA kernel (bf16, B=64, 12 views,
                 K=65536), timed under CUDA-graph replay, bytes moved against the floor
    photometric  the fused photometric kernel: 64 images x (2x224 + 10x96) -> bf16
    step         our step vs the reference step, ViT-S/16, bf16, MFU
    corpus       the ImageNet-like benchmark corpus and its .beton (cached)
    pipeline     multi-crop images/s and CPU cores busy per loader on the ImageNet-like corpus
    e2e          ViT-S/16 training on each fast loader: images/s and data-wait share
    patch        train-step images/s and MFU against patch size (16, 14, 8), ViT-S and ViT-B
    dali-*       the same for DALI (corpus shards, tests, pipeline, e2e)

How they are cut into device calls that fit a 15-minute window, and what each call carries,
is ``gpu_plan.py`` (``python -m benchmarks.gpu.plan`` prints it). ``--pack DIR`` writes the
whole output folder as ``DIR/<name>.tgz`` plus ``DIR/<name>-summary.md`` (what a device call
brings back); ``--skip-done RESULTS`` skips the parts that a committed summary of this GPU
(``RESULTS/<gpu>_*_gpu_summary.json``) says ran ok, so a later window runs what is missing.

A part that needs DALI or FFCV is skipped where they are not installed, so the same command
serves a call before DALI is unpacked (``--parts`` picks parts; ``--only dali`` the DALI
ones). On a machine without a GPU every part is skipped and says so: a dry run; with
``--rehearse`` every part runs there instead, on the CPU and as small as it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@dataclass(frozen=True)
class Part:
    """One time-boxed step of the check.

    argv: the command, with ``{out}`` (OUTDIR), ``{results}`` and ``{py}`` substituted;
    needs: prerequisites among "cuda", "dali", "ffcv"; timeout_s: the part's time box;
    group: "dali" for the parts that need the DALI call (``--only dali``)."""

    name: str
    what: str
    argv: tuple[str, ...]
    timeout_s: int
    needs: tuple[str, ...] = ("cuda",)
    group: str = "main"


def _bench(*args: str, results: str = "") -> tuple[str, ...]:
    """A dino-bench sub-command on the GPU; ``results``: a sub-folder, for sub-commands that
    run twice (FFCV, then DALI) and would otherwise write the same file names."""
    out = "{results}/" + results if results else "{results}"
    return ("{py}", "-m", "benchmarks.cli", *args, "--device", "cuda", "--output-dir", out,
            "--no-tensorboard")


_PYTEST = ("{py}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=60", "-rs")

PARTS: tuple[Part, ...] = (
    Part("env", "GPU, versions, modules, FFCV's libraries, copy and matmul ceilings",
         ("{py}", "-m", "benchmarks.gpu.env", "env", "{results}/env.json"), 40),
    Part("kernels", "the kernel library: the carried build, else rebuilt with nvcc there",
         ("{py}", "-m", "benchmarks.gpu.env", "kernels", "{results}/kernels.json"), 30),
    Part("tests", "pytest -m gpu (kernels vs twins, step, FFCV loader)",
         (*_PYTEST, "-m", "gpu and not dali", "tests"), 70),
    Part("sanitize", "compute-sanitizer memcheck + racecheck: one loss, one photometric launch",
         ("{py}", "-m", "benchmarks.gpu.sanitize", "{results}/sanitize.json"), 40),
    Part("loss", "DINO loss fwd+bwd, bf16 B=64 V=12 K=65536, graph replay",
         _bench("loss", "--dtype", "bfloat16"), 30),
    Part("photometric", "fused photometric kernel, 64 x (2x224 + 10x96) -> bf16",
         _bench("photometric"), 20),
    Part("step", "our step vs the reference step, ViT-S/16, bf16, MFU",
         _bench("step", "--archs", "vit_small", "--precision", "bf16", "--seconds", "3",
                "--recipes", "dino"), 50),
    Part("step-dinov2", "the DINOv2 recipe's step (iBOT patch loss by its kernel, KoLeo, "
         "Sinkhorn-Knopp) next to DINO's in the same run, ViT-S/16, bf16",
         _bench("step", "--archs", "vit_small", "--precision", "bf16", "--seconds", "3",
                "--recipes", "dino", "dinov2", results="dinov2"), 70),
    Part("corpus", "build the ImageNet-like corpus (8,192 JPEGs) and its .beton",
         ("{py}", "-m", "benchmarks.harness.corpus", "--convert", "ffcv"), 60),
    Part("pipeline", "FFCV + GPU finish vs the reference, ImageNet-like corpus",
         _bench("pipeline", "--backends", "reference", "ffcv", "--seconds", "10",
                "--warmup-seconds", "2", "--time-budget", "70", results="ffcv"),
         80, ("cuda", "ffcv")),
    Part("e2e", "ViT-S/16 training fed by FFCV: images/s, data-wait share",
         _bench("e2e", "--backends", "ffcv", "--seconds", "20", "--time-budget", "55",
                "--recipes", "dino", results="ffcv"), 60, ("cuda", "ffcv")),
    Part("patch", "train-step img/s and MFU, ViT-S/ViT-B at patch 16, 14, 8",
         _bench("patch", "--archs", "vit_small", "vit_base", "--patches", "16", "14", "8",
                "--precision", "bf16", "--seconds", "2"), 85),
    Part("dali-corpus", "the corpus's DALI tar shards and index files",
         ("{py}", "-m", "benchmarks.harness.corpus", "--convert", "wds"), 45, ("cuda", "dali"),
         "dali"),
    Part("dali-tests", "pytest -m 'gpu and dali' (mixed decode, loader)",
         (*_PYTEST, "-s", "-m", "gpu and dali", "tests"), 55, ("cuda", "dali"), "dali"),
    Part("dali-pipeline", "DALI mixed decode + GPU finish, ImageNet-like corpus",
         _bench("pipeline", "--backends", "reference", "dali", "--seconds", "10",
                "--warmup-seconds", "2", "--time-budget", "80", results="dali"),
         90, ("cuda", "dali"), "dali"),
    Part("dali-e2e", "ViT-S/16 training fed by DALI: images/s, data-wait share",
         _bench("e2e", "--backends", "dali", "--seconds", "20", "--time-budget", "50",
                "--recipes", "dino", results="dali"), 55, ("cuda", "dali"), "dali"),
)
# Parts every window runs again, even where a committed summary says they ran: what the
# others need on the machine at hand.
ALWAYS = ("env", "kernels")


REHEARSAL_CORPUS_IMAGES = 256
REHEARSAL_BOX_S = 600  # a rehearsal part's time box: a hang guard, not the GPU's box


def rehearsal(part: Part) -> Part:
    """``part`` as a CPU rehearsal: the same command, as small as it runs (benchmarks with
    ``--device cpu --quick``, pytest collecting only, a 256-image corpus). It measures
    nothing; it finds a broken import, option or wiring before GPU minutes are spent on
    it. ``env`` and ``kernels`` have nothing to rehearse without a GPU and keep needing one;
    ``sanitize`` lists the runs it would make (``--dry-run``). Its time box is
    ``REHEARSAL_BOX_S`` (the budget still bounds it): a GPU part's box sizes GPU work, and a
    shared CPU running the same code small may take longer without anything being wrong."""
    argv = list(part.argv)
    if "benchmarks.gpu.env" in argv:
        return part
    if "benchmarks.gpu.sanitize" in argv:
        argv.append("--dry-run")
    if "--device" in argv:
        argv[argv.index("--device") + 1] = "cpu"
    if "benchmarks.cli" in argv:
        argv.append("--quick")
    if "pytest" in " ".join(argv):
        argv.append("--collect-only")
    if "benchmarks.harness.corpus" in argv:
        argv += ["--images", str(REHEARSAL_CORPUS_IMAGES)]
    return dataclasses.replace(part, argv=tuple(argv), timeout_s=REHEARSAL_BOX_S,
                               needs=tuple(n for n in part.needs if n != "cuda"))


def missing(needs: tuple[str, ...]) -> str | None:
    """Why a part cannot run here (the first missing prerequisite), or None."""
    for need in needs:
        if need == "cuda":
            import torch
            if not torch.cuda.is_available():
                return "no CUDA GPU on this machine"
        elif need == "dali" and importlib.util.find_spec("nvidia.dali") is None:
            return "nvidia-dali is not installed"
        elif need == "ffcv" and importlib.util.find_spec("ffcv") is None:
            return "ffcv is not installed"
    return None


@dataclass
class Outcome:
    name: str
    what: str
    status: str          # ok | failed (rc N) | timed out | skipped
    seconds: float = 0.0
    detail: str = ""     # skip reason, or the log's last line


def _is_warning(line: str) -> bool:
    """A Python warning and its source line (e.g. multiprocessing's leaked-semaphore note at
    exit): not what a summary should show as a part's last word."""
    return "Warning: " in line or line.lstrip().startswith("warnings.warn(")


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                 if ln.strip() and not _is_warning(ln)]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


def run_part(part: Part, out: Path, timeout_s: float) -> Outcome:
    """Run one part in its own process group, killed whole when its time box ends."""
    results, logs = out / "results", out / "logs"
    argv = [a.format(py=PY, out=out, results=results) for a in part.argv]
    log = logs / f"{part.name}.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        fh.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.monotonic() - start
    if rc is None:
        with open(log, "a") as fh:
            fh.write(f"\n[gpu-check] killed after its time box of {timeout_s:.0f} s\n")
        return Outcome(part.name, part.what, "timed out", seconds, _last_line(log))
    status = "ok" if rc == 0 else f"failed (rc {rc})"
    return Outcome(part.name, part.what, status, seconds, _last_line(log))


def select(names: list[str] | None, only: str | None) -> list[Part]:
    known = {p.name: p for p in PARTS}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"dino-bench gpu: unknown part(s) {unknown}; known: {list(known)}")
        return [known[n] for n in names]
    return [p for p in PARTS if only is None or p.group == only]


def done_parts(results: Path, slug: str) -> dict[str, str]:
    """Parts that a committed summary of GPU ``slug`` says ran ok: {part: summary file}."""
    done = {}
    for path in sorted(results.glob(f"{slug}_*_gpu_summary.json")):
        for part in json.loads(path.read_text()).get("parts", []):
            if part.get("status") == "ok":
                done.setdefault(part["name"], path.name)
    return done


def gpu_slug() -> str | None:
    """This machine's GPU as results files name it (``h100``, ``h200``), or None."""
    import torch
    if not torch.cuda.is_available():
        return None
    from ..harness.timing import machine_slug
    return machine_slug(torch.cuda.get_device_name(), os.cpu_count() or 1)


def run_check(out: Path, parts: list[Part], budget_s: float,
              done: dict[str, str] | None = None) -> list[Outcome]:
    """Run ``parts`` in order within ``budget_s`` seconds in all; write the summary.
    ``done``: parts measured already ({part: summary file}), skipped unless in ALWAYS."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    start, outcomes = time.monotonic(), []
    for part in parts:
        reason = missing(part.needs)
        if reason is None and done and part.name in done and part.name not in ALWAYS:
            reason = f"ran ok on this GPU already ({done[part.name]})"
        left = budget_s - (time.monotonic() - start)
        if reason is None and left < 10:
            reason = f"the check's budget of {budget_s:.0f} s is spent"
        if reason is not None:
            outcomes.append(Outcome(part.name, part.what, "skipped", 0.0, reason))
        else:
            print(f"[gpu-check] {part.name}: {part.what} (box {min(part.timeout_s, left):.0f} s)",
                  flush=True)
            outcomes.append(run_part(part, out, min(part.timeout_s, left)))
        write_summary(out, outcomes, time.monotonic() - start)
    return outcomes


def render(outcomes: list[Outcome], elapsed: float) -> str:
    lines = [f"# GPU check: {sum(o.status == 'ok' for o in outcomes)} ok, "
             f"{sum(o.status.startswith(('failed', 'timed')) for o in outcomes)} failed, "
             f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {elapsed:.0f} s", "",
             "| part | status | s | detail |", "|---|---|---|---|"]
    for o in outcomes:
        detail = o.detail.replace("|", "/")
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.0f} | {detail} |")
    return "\n".join(lines) + "\n"


def pack(out: Path, dest: Path, name: str) -> Path:
    """``out`` as ``dest/<name>.tgz`` and its summary as ``dest/<name>-summary.md``: two
    files, what a device call can bring back (at most 8, 16 MiB each)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname=name)
    if (out / "summary.md").is_file():
        (dest / f"{name}-summary.md").write_text((out / "summary.md").read_text())
    return archive


def write_summary(out: Path, outcomes: list[Outcome], elapsed: float) -> None:
    (out / "summary.md").write_text(render(outcomes, elapsed))
    (out / "summary.json").write_text(json.dumps(
        {"elapsed_s": elapsed, "parts": [dataclasses.asdict(o) for o in outcomes]}, indent=1))


def build_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {p.name:<14}{p.what} ({p.timeout_s} s box; needs {', '.join(p.needs)})"
                      for p in PARTS)
    p = argparse.ArgumentParser(
        prog="dino-bench gpu", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check and measure every GPU part in one time-boxed command; see the "
                    "summary it prints last (also OUTDIR/summary.md).",
        epilog=f"parts, in order:\n{table}\n\nexample (a lent H200, DALI not yet unpacked):\n"
               "  dino-bench gpu /tmp/gc --budget-s 420\n  dino-bench gpu /tmp/gc --only dali")
    p.add_argument("outdir", type=Path, help="where logs/, results/ and summary.* go")
    p.add_argument("--parts", nargs="+", metavar="PART", help="run only these parts, in order")
    p.add_argument("--only", choices=("main", "dali"), help="run one group of parts")
    p.add_argument("--rehearse", action="store_true",
                   help="run every part on this machine's CPU, as small as it runs "
                        "(--device cpu --quick, pytest --collect-only, a small corpus): "
                        "measures nothing, finds what would break before a GPU is lent")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="seconds for the whole check (default 450); a part gets at most what "
                        "is left, and parts after the budget are skipped")
    p.add_argument("--skip-done", type=Path, metavar="RESULTS",
                   help="skip parts that a committed RESULTS/<gpu>_*_gpu_summary.json of this "
                        "GPU says ran ok (env and kernels always run)")
    p.add_argument("--pack", type=Path, metavar="DIR",
                   help="also write OUTDIR as DIR/<pack-name>.tgz and its summary as "
                        "DIR/<pack-name>-summary.md (for the device tool's $OUT)")
    p.add_argument("--pack-name", default="gpu-check", help="file name stem for --pack")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = select(args.parts, args.only)
    if args.rehearse:
        parts = [rehearsal(p) for p in parts]
    slug = gpu_slug() if args.skip_done else None
    done = done_parts(args.skip_done, slug) if slug else None
    outcomes = run_check(args.outdir, parts, args.budget_s, done)
    print((args.outdir / "summary.md").read_text(), flush=True)
    if args.pack:
        print(f"[gpu-check] packed {pack(args.outdir, args.pack, args.pack_name)}", flush=True)
    return 0 if not any(o.status.startswith(("failed", "timed")) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
