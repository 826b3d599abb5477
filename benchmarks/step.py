"""``dino-bench step``: the project's DINO step against a recreation of the reference step.

Both steps train the same student/teacher (same initial weights) on the same synthetic
multi-crop batch, in the same process, alternating measurements so machine noise hits both:

- ours: ``dino_core.step.DINOStep`` (autocast, fused/foreach AdamW, foreach per-tensor
  clipping, foreach EMA, fused loss, no host sync inside the step);
- reference: the recipe as the original code runs it: the pair-loop loss
  (``DINOLoss(impl="reference")``), a single-tensor AdamW loop, per-tensor clipping with one
  host sync per tensor, a Python loop for the EMA and ``loss.item()`` every step.

Reported per architecture: images/s, median step time and spread, model-FLOPs utilisation
against the device peak (benchmarks/flops.py), peak memory, and ours/reference speedup.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from .flops import ViTShape, device_peak, dino_step_flops, mfu, HeadShape
from .harness import PeakMemory, describe_machine, resolve_device, time_fn
from .report import BenchmarkResult, PlotSpec, write_results
from .trainstep import StepShape, build_models, build_train_step


@dataclass
class ReferenceStep:
    """The reference recipe's step, recreated from its description (own code)."""

    run: object


def build_reference_step(arch: str, patch: int, shape: StepShape, device: torch.device,
                         precision: str) -> ReferenceStep:
    from dino_core.ema import ema_update_reference, paired_params
    from dino_core.loss import DINOLoss
    from dino_core.optim import clip_per_tensor_reference, param_groups
    from dino_core.step import autocast_context

    student, teacher = build_models(arch, patch, shape.out_dim, device, shape.global_res)
    loss_fn = DINOLoss(shape.out_dim, shape.n_global + shape.n_local, 0.04, 0.04, 0, 100,
                       impl="reference").to(device)
    opt = torch.optim.AdamW(param_groups(student), lr=1e-5, foreach=False, fused=False)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    sp, tp = paired_params(student, teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    views = shape.synthetic_views(device)

    def run() -> float:
        with autocast_context(precision, device):
            with torch.no_grad():
                t = teacher(views[:2])
            s = student(views)
            loss = loss_fn(s, t, 1)
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


def run_step_benchmark(device: str = "auto", archs: tuple[str, ...] | None = None,
                       patch: int = 16, batch: int | None = None, quick: bool = False,
                       iters: int | None = None, precision: str = "auto",
                       output_dir: str = "benchmarks/results", argv: list[str] | None = None
                       ) -> BenchmarkResult:
    from dino_core.step import resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if quick or dev.type == "cpu":
        archs = archs or ("vit_tiny",)
        shape = StepShape(batch=batch or 8, global_res=64, local_res=32, n_local=4, out_dim=4096)
        iters = iters or (3 if quick else 8)
    else:
        archs = archs or ("vit_small", "vit_base")
        shape = StepShape(batch=batch or 64)
        iters = iters or 30
    peak = device_peak(dev)
    machine = describe_machine(dev, argv)
    rows = []
    for arch in archs:
        flops = dino_step_flops(ViTShape.from_arch(arch, patch), shape.global_res,
                                shape.n_global, shape.local_res, shape.n_local,
                                HeadShape(out_dim=shape.out_dim)).total
        ours, _ = build_train_step(arch, patch, shape, dev, prec)
        ref = build_reference_step(arch, patch, shape, dev, prec)
        timings, mems = {}, {}
        for name, fn in (("reference", ref.run), ("ours", ours.run)):
            with PeakMemory(dev) as mem:
                timings[name] = time_fn(fn, dev, warmup=2, iters=iters)
            mems[name] = mem.extra
        for name in ("reference", "ours"):
            t = timings[name]
            ips = t.per_second(shape.batch)
            rows.append({"arch": arch, "patch": patch, "impl": name, "batch": shape.batch,
                         "precision": prec, "images_per_s": ips,
                         **t.as_row("step_s"), "mfu": mfu(flops, ips, peak),
                         "peak_mem_mb": mems[name] / 2**20,
                         "speedup_vs_reference": timings["reference"].median / t.median,
                         "loss_impl": ours.loss_impl if name == "ours" else "reference pair loop"})
        del ours, ref
    result = BenchmarkResult(
        what="step", title="DINO training step: ours vs the reference recipe's step",
        machine=machine, baseline="reference step recreated in benchmarks/step.py, same run",
        rows=rows, columns=["arch", "impl", "batch", "precision", "images_per_s", "step_s_median_ms",
                            "step_s_iqr_ms", "mfu", "peak_mem_mb", "speedup_vs_reference"],
        config={"shape": shape.__dict__, "patch": patch, "iters": iters, "peak": peak.source},
        notes=[f"Crops per image: {shape.n_global}x{shape.global_res} + "
               f"{shape.n_local}x{shape.local_res}, K={shape.out_dim}, synthetic inputs.",
               "MFU counts model FLOPs (student fwd+bwd on every crop, teacher fwd on the "
               f"globals) against {peak.source}."])
    write_results(result, output_dir, PlotSpec(x="impl", panels=(("images/s", ("images_per_s",)),),
                                                group=("arch",), kind="bar"))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dino-bench step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", nargs="*", help="architectures (default: vit_small vit_base on GPU, "
                   "vit_tiny on CPU)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--quick", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--output-dir", default="benchmarks/results")
    a = p.parse_args(argv)
    r = run_step_benchmark(a.device, tuple(a.arch) if a.arch else None, a.patch_size,
                           a.batch_size, a.quick, a.iters, a.precision, a.output_dir,
                           argv=sys.argv if argv is None else ["dino-bench", "step", *argv])
    for row in r.rows:
        print(f"{row['arch']:10s} {row['impl']:9s} {row['images_per_s']:9.1f} img/s  "
              f"MFU {100 * row['mfu']:5.1f}%  x{row['speedup_vs_reference']:.2f} vs reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
