"""``dino-bench step``: the project's DINO step against a recreation of the reference step,
and the DINOv2 recipe's step on the same engine (``--recipes``, both by default).

Both steps train the same student/teacher (same initial weights) on the same synthetic
multi-crop batch, in the same process, one after the other (each is built, timed and freed
before the next, so its peak memory is its own):

- ours: ``dino_core.train.step.TrainStep`` (autocast, fused/foreach AdamW, foreach
  per-tensor clipping, foreach EMA, fused loss, no host sync inside the step);
- reference: the recipe as the original code runs it: the pair-loop loss (the DINO recipe's
  losses with ``loss.impl=reference``), a single-tensor AdamW loop, per-tensor clipping with
  one host sync per tensor, a Python loop for the EMA and ``loss.item()`` every step.

- ours+compile (``--compile``): ours with both backbones through torch.compile
  (``model.compile`` in training); its warm-up time includes the compilation.
- recipe dinov2: ours (and ours+compile) with the DINOv2 recipe (its defaults: image term with
  Sinkhorn-Knopp, iBOT patch term on DINOv2's masks through the shared head, KoLeo) on the
  same views, in the same run; there is no reference step for it, and its MFU counts the
  same model FLOPs as DINO's (the masked patch tokens through the head are not counted).

Reported per architecture: images/s, median step time and spread, model-FLOPs utilisation
against the device peak (benchmarks/model/flops.py), peak memory, and ours/reference speedup. Each
measurement is bounded (``--seconds``, ``--iters``); a configuration that fails (out of
memory, a kernel that does not build, ...) gets its reason in ``status`` and the rest runs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from .flops import ViTShape, device_peak, dino_step_flops, mfu, HeadShape
from ..harness.timing import PeakMemory, describe_machine, resolve_device
from ..harness.report import BenchmarkResult, PlotSpec, write_results
from .trainstep import (RECIPES, StepShape, synthetic_batch, bench_config, build_models,
                        build_train_step, failure_status, release, steady_values, time_within)


@dataclass
class ReferenceStep:
    """The reference recipe's step, recreated from its description (own code)."""

    run: object


def build_reference_step(arch: str, patch: int, shape: StepShape, device: torch.device,
                         precision: str) -> ReferenceStep:
    from dino_core.recipes import build_recipe
    from dino_core.train.ema import ema_update_reference, paired_params
    from dino_core.train.optim import clip_per_tensor_reference, param_groups
    from dino_core.train.step import autocast_context

    cfg = bench_config(arch, patch, shape, loss_impl="reference")  # the pair-loop loss
    recipe = build_recipe(cfg)
    student, teacher = build_models(recipe, patch, device, shape.global_res)
    opt = torch.optim.AdamW(param_groups(student), lr=1e-5, foreach=False, fused=False)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    sp, tp = paired_params(student, teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    batch = synthetic_batch(shape.synthetic_views(device))
    at = steady_values(cfg, recipe, 1)(0)

    def run() -> float:
        with autocast_context(precision, device):  # teacher, student, the DINO loss
            loss = recipe.losses(batch, student, teacher, at)["dino"]
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        clip_per_tensor_reference(params, 3.0)   # host sync per tensor
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        ema_update_reference(sp, tp, 0.996)
        return loss.item()                       # host sync every step

    return ReferenceStep(run)


COMPILED = "ours+compile"


def _build(impl: str, arch: str, patch: int, shape: StepShape, device: torch.device,
           precision: str, recipe: str = "dino") -> tuple[object, str]:
    """(a zero-argument step, the loss it uses) for ``impl`` of ``recipe``."""
    if impl == "reference":
        return build_reference_step(arch, patch, shape, device, precision).run, \
            "reference pair loop"
    step, _ = build_train_step(arch, patch, shape, device, precision, compile=impl == COMPILED,
                               recipe=recipe)
    return step.run, step.loss_impl


def recipe_impls(recipes: tuple[str, ...], compile: bool) -> list[tuple[str, str]]:
    """(recipe, impl) rows in measuring order: DINO's reference first (the baseline), then
    each recipe's ours (and ours+compile)."""
    ours = ("ours",) + ((COMPILED,) if compile else ())
    return [(r, impl) for r in recipes
            for impl in (("reference",) if r == "dino" else ()) + ours]


def measure_impl(impl: str, arch: str, patch: int, shape: StepShape, device: torch.device,
                 precision: str, warmup: int, iters: int, seconds: float | None,
                 recipe: str = "dino") -> dict:
    """One row: build ``impl``'s models and step for ``recipe``, time it, report memory; any
    failure is written into ``status`` and the sweep goes on."""
    row: dict = {"arch": arch, "patch": patch, "recipe": recipe, "impl": impl,
                 "batch": shape.batch, "precision": precision, "status": "ok"}
    try:
        run, row["loss_impl"] = _build(impl, arch, patch, shape, device, precision, recipe)
        with PeakMemory(device) as mem:
            bounded = time_within(run, device, warmup, iters, seconds)
        t = bounded.timing
        row.update({"images_per_s": t.per_second(shape.batch), **t.as_row("step_s"),
                    "warmup_s": bounded.warmup_s,
                    # GPU: max_memory_allocated over the measurement, models and optimizer
                    # state included (only this implementation is alive); CPU: peak RSS
                    "peak_mem_mb": mem.peak / 2**20, "extra_mem_mb": mem.extra / 2**20})
        row["_median"] = t.median
    except Exception as err:  # noqa: BLE001 - one failing configuration must not end the run
        row["status"] = failure_status(impl, err)
    release(device)
    return row


def run_step_benchmark(device: str = "auto", archs: tuple[str, ...] | None = None,
                       patch: int = 16, batch: int | None = None, quick: bool = False,
                       iters: int | None = None, precision: str = "auto",
                       output_dir: str = "benchmarks/results", argv: list[str] | None = None,
                       seconds: float | None = None, compile: bool = False,
                       recipes: tuple[str, ...] = RECIPES) -> BenchmarkResult:
    """Time every implementation of every recipe per architecture; one row each.

    GPU default: ViT-S/16 and ViT-B/16, batch 64, 2x224 + 10x96, K = 65536, bf16, each
    measurement about ``seconds`` (default 5) long, at most ``iters`` (default 200) calls.
    ``compile`` adds an ``ours+compile`` row (its compile time is in ``warmup_s``).
    """
    from dino_core.train.step import resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if quick or dev.type == "cpu":
        archs = archs or ("vit_tiny",)
        shape = StepShape(batch=batch or 8, global_res=64, local_res=32, n_local=4, out_dim=4096)
        iters = iters or (3 if quick else 8)
        warmup = 1 if quick else 2
    else:
        archs = archs or ("vit_small", "vit_base")
        shape = StepShape(batch=batch or 64)
        iters = iters or 200
        seconds = 5.0 if seconds is None else seconds
        warmup = 3
    rows_to_measure = recipe_impls(recipes, compile)
    peak = device_peak(dev)
    machine = describe_machine(dev, argv)
    rows = []
    for arch in archs:
        flops = dino_step_flops(ViTShape.from_arch(arch, patch), shape.global_res,
                                shape.n_global, shape.local_res, shape.n_local,
                                HeadShape(out_dim=shape.out_dim)).total
        measured = [measure_impl(impl, arch, patch, shape, dev, prec, warmup, iters, seconds,
                                 recipe)
                    for recipe, impl in rows_to_measure]
        ref = next((r.get("_median") for r in measured if r["impl"] == "reference"), None)
        for row in measured:
            median = row.pop("_median", None)
            if median is not None:
                row["mfu"] = mfu(flops, row["images_per_s"], peak)
                row["speedup_vs_reference"] = ref / median if ref else None
            print(f"[step] {arch} {row['recipe']} {row['impl']}: "
                  f"{row.get('images_per_s', 0):.1f} img/s ({row['status']})", flush=True)
        rows += measured
    bound = (f"about {seconds:g} s of timed calls (at most {iters})" if seconds is not None
             else f"{iters} timed calls")
    result = BenchmarkResult(
        what="step", title="Training step: DINO (ours vs the reference recipe's step) and "
        "DINOv2 on the same engine",
        machine=machine, baseline="reference step recreated in benchmarks/model/step.py, same run",
        rows=rows, columns=["arch", "recipe", "impl", "batch", "precision", "images_per_s",
                            "step_s_median_ms", "step_s_iqr_ms", "step_s_n", "mfu",
                            "peak_mem_mb", "speedup_vs_reference", "warmup_s", "status"],
        config={"shape": shape.__dict__, "patch": patch, "iters": iters, "seconds": seconds,
                "warmup": warmup, "compile": compile, "recipes": list(recipes),
                "peak": peak.source},
        notes=[f"Crops per image: {shape.n_global}x{shape.global_res} + "
               f"{shape.n_local}x{shape.local_res}, K={shape.out_dim}, synthetic inputs.",
               f"Per implementation: {warmup} warm-up calls, one probe call, then {bound}; "
               "on a GPU each call is timed by CUDA events with one sync at the end. "
               "Implementations are built and measured one at a time.",
               "MFU counts model FLOPs (student fwd+bwd on every crop, teacher fwd on the "
               f"globals) against {peak.source}.",
               "peak_mem_mb: torch.cuda.max_memory_allocated during the measurement on a GPU "
               "(models, optimizer state and activations of that implementation alone); "
               "peak resident set size of the process on the CPU.",
               "speedup_vs_reference: against the DINO reference step (DINOv2 rows: what "
               "the DINOv2 step costs relative to it, not a speedup of like for like)."])
    write_results(result, output_dir, PlotSpec(x="impl", panels=(("images/s", ("images_per_s",)),),
                                                group=("arch", "recipe"), kind="bar"))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dino-bench step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", nargs="*", help="architectures (default: vit_small vit_base on GPU, "
                   "vit_tiny on CPU)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--iters", type=int, help="timed calls (with --seconds: at most this many)")
    p.add_argument("--seconds", type=float, help="timed seconds per measurement (GPU default 5)")
    p.add_argument("--compile", action="store_true", help="add an ours+compile row")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                   help="recipes to time (default: dino dinov2)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--quick", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--output-dir", default="benchmarks/results")
    a = p.parse_args(argv)
    r = run_step_benchmark(a.device, tuple(a.arch) if a.arch else None, a.patch_size,
                           a.batch_size, a.quick, a.iters, a.precision, a.output_dir,
                           argv=sys.argv if argv is None else ["dino-bench", "step", *argv],
                           seconds=a.seconds, compile=a.compile, recipes=tuple(a.recipes))
    for row in r.rows:
        if row["status"] != "ok":
            print(f"{row['arch']:10s} {row['recipe']:6s} {row['impl']:12s} {row['status']}")
            continue
        speedup = row["speedup_vs_reference"]
        print(f"{row['arch']:10s} {row['recipe']:6s} {row['impl']:12s} "
              f"{row['images_per_s']:9.1f} img/s  "
              f"MFU {100 * row['mfu']:5.1f}%  peak {row['peak_mem_mb']:8.0f} MiB  "
              + (f"x{speedup:.2f} vs reference" if speedup else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
