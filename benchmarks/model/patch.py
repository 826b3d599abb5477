"""``dino-bench patch``: throughput against patch size, per architecture.

For every (architecture, patch size):
- forward-only images/s of the backbone at 224 px (the DINO paper's inference-throughput
  column; the paper's V100 figures are shown next to ours),
- full DINO train-step images/s with multi-crop (2 global + N local crops, student forward +
  backward, teacher forward, loss, AdamW, EMA: ``benchmarks.model.trainstep``) on synthetic inputs,
- model-FLOPs utilisation of both against the device's peak (``benchmarks.model.flops``),
- peak memory of both.
Each measurement is bounded in time (``seconds``, at most ``iters`` calls, after ``warmup``).
A configuration that fails (out of GPU memory or anything else) gets its reason in the row's
``status`` and the sweep goes on. The GPU default is ViT-S and ViT-B at patch 16, 14 and 8,
batch 64 (ViT-B/8's step, the largest, needs roughly 70 GB of activations in bf16).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .flops import HeadShape, ViTShape, device_peak, dino_step_flops, mfu, vit_forward_flops
from ..harness.timing import BenchmarkResult, PeakMemory, PlotSpec, describe_machine
from .trainstep import StepShape, build_train_step, failure_status, release, snap, time_within

# DINO paper, inference images/s on one V100 (dino_recipe.md). Patch 5 is ViT-S.
PAPER_V100_IM_S = {("vit_small", 16): 1007, ("vit_small", 8): 180, ("vit_small", 5): 44,
                   ("vit_base", 16): 312, ("vit_base", 8): 63}
MIB = 2 ** 20


@dataclass(frozen=True)
class PatchBenchConfig:
    """What the patch sweep measures. Defaults are the GPU run; ``quick()`` the CPU smoke run."""

    archs: tuple[str, ...] = ("vit_small", "vit_base")
    patches: tuple[int, ...] = (16, 14, 8)
    infer_res: int = 224
    infer_batch: int = 128
    train_batch: int = 64
    global_res: int = 224
    local_res: int = 96
    n_local: int = 10
    out_dim: int = 65536
    warmup: int = 3
    iters: int = 50           # timed calls at most
    seconds: float | None = 3.0   # timed seconds per measurement (None: exactly iters calls)
    precision: str = "auto"   # auto: bf16 on CUDA, fp32 on CPU
    train: bool = True

    @classmethod
    def quick(cls) -> "PatchBenchConfig":
        """ViT-tiny on small inputs: a CPU-sized run of the whole sweep."""
        return cls(archs=("vit_tiny",), patches=(16, 14, 8, 5), infer_res=64, infer_batch=8,
                   train_batch=4, global_res=64, local_res=32, n_local=4, out_dim=4096,
                   warmup=1, iters=3, seconds=None)

    def step_shape(self, patch: int) -> StepShape:
        return StepShape(batch=self.train_batch, global_res=snap(self.global_res, patch),
                         local_res=snap(self.local_res, patch), n_local=self.n_local,
                         out_dim=self.out_dim)


def measure_forward(arch: str, patch: int, cfg: PatchBenchConfig, device: torch.device) -> dict:
    """Backbone forward images/s at ``cfg.infer_res`` (snapped to the patch), eval mode."""
    from dino_core.models import build_vit
    from dino_core.train.step import autocast_context, resolve_precision

    res = snap(cfg.infer_res, patch)
    model = build_vit(arch, patch, img_size=res).to(device).eval()
    x = torch.randn(cfg.infer_batch, 3, res, res, device=device)
    precision = resolve_precision(cfg.precision, device)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(precision, device):
            return model(x)

    with PeakMemory(device) as mem:
        timing = time_within(forward, device, cfg.warmup, cfg.iters, cfg.seconds).timing
    ims = timing.per_second(cfg.infer_batch)
    return {"infer_res": res, "forward_im_s": ims, **timing.as_row("forward"),
            "forward_best_im_s": cfg.infer_batch / timing.min,
            "forward_gflop_per_img": vit_forward_flops(ViTShape.from_arch(arch, patch), res) / 1e9,
            "forward_peak_mib": mem.peak / MIB, "forward_extra_mib": mem.extra / MIB}


def measure_train(arch: str, patch: int, cfg: PatchBenchConfig, device: torch.device) -> dict:
    """Full DINO train-step images/s (one image = all its crops) on synthetic views."""
    shape = cfg.step_shape(patch)
    step, _ = build_train_step(arch, patch, shape, device, cfg.precision)
    with PeakMemory(device) as mem:
        bounded = time_within(step.run, device, cfg.warmup, cfg.iters, cfg.seconds)
    timing = bounded.timing
    return {"train_warmup_s": bounded.warmup_s, "train_crops": _crops_label(shape),
            "train_im_s": timing.per_second(shape.batch), **timing.as_row("train"),
            "train_best_im_s": shape.batch / timing.min,
            "train_gflop_per_img": _step_gflop(arch, patch, shape),
            "train_peak_mib": mem.peak / MIB, "train_extra_mib": mem.extra / MIB,
            "loss_impl": step.loss_impl, "step_impl": step.step_impl}


def run_patch_benchmark(cfg: PatchBenchConfig, device: torch.device,
                        argv: list[str] | None = None) -> BenchmarkResult:
    """Run the sweep; one row per (arch, patch), plus "not measured yet" GPU rows on a CPU."""
    from dino_core.train.step import resolve_precision

    peak = device_peak(device)
    precision = resolve_precision(cfg.precision, device)
    rows = []
    for arch in cfg.archs:
        for patch in cfg.patches:
            row: dict = {"device": device.type, "arch": arch, "patch": patch,
                         "precision": precision, "status": "ok",
                         "paper_v100_im_s": PAPER_V100_IM_S.get((arch, patch))}
            for name, measure in (("forward", measure_forward), ("train", measure_train)):
                if name == "train" and not cfg.train:
                    continue
                try:
                    row.update(measure(arch, patch, cfg, device))
                except Exception as err:  # noqa: BLE001 - one failing config must not end the sweep
                    fail = failure_status(name, err)
                    row["status"] = fail if row["status"] == "ok" else f"{row['status']}; {fail}"
                release(device)
            print(f"[patch] {arch}/{patch}: forward {row.get('forward_im_s', 0):.1f} im/s, "
                  f"train {row.get('train_im_s', 0):.1f} im/s ({row['status']})", flush=True)
            rows.append(row)
    if device.type != "cuda":
        # A shared CPU's matmul peak drifts with the load: the better of two probes (before
        # and after the sweep) keeps one slow probe from inflating MFU.
        peak = max(peak, device_peak(device), key=lambda p: p.flops_per_s)
    for row in rows:
        for mode in ("forward", "train"):
            if f"{mode}_im_s" in row:
                row[f"{mode}_mfu"] = mfu(row[f"{mode}_gflop_per_img"] * 1e9,
                                         row[f"{mode}_im_s"], peak)
    if device.type != "cuda":
        rows += _gpu_placeholders()
    return BenchmarkResult(
        what="patch", title="DINO throughput against patch size",
        machine=describe_machine(device, argv),
        baseline="the DINO paper's V100 inference images/s (paper_v100_im_s, its own hardware "
        "and settings; not re-measured here) and the device peak for MFU: "
        f"{peak.flops_per_s / 1e12:.3g} TFLOP/s ({peak.source})",
        rows=rows, config=asdict(cfg), columns=PATCH_COLUMNS,
        notes=patch_notes(cfg, device, rows))


PATCH_COLUMNS = ["device", "arch", "patch", "infer_res", "forward_im_s", "forward_best_im_s",
                 "forward_iqr_ms", "paper_v100_im_s", "forward_mfu", "train_crops", "train_im_s",
                 "train_best_im_s", "train_iqr_ms",
                 "train_gflop_per_img", "train_mfu", "train_peak_mib", "train_extra_mib",
                 "status"]

PATCH_PLOT = PlotSpec(
    x="patch", group=("arch", "device"), kind="line", xlabel="patch size (px)", logy=True,
    panels=(("forward images/s (log)", ("forward_im_s", "paper_v100_im_s")),
            ("DINO train-step images/s (log)", ("train_im_s",))))


def _crops_label(shape: StepShape) -> str:
    return f"{shape.n_global}x{shape.global_res}+{shape.n_local}x{shape.local_res}"


def _step_gflop(arch: str, patch: int, shape: StepShape) -> float:
    flops = dino_step_flops(ViTShape.from_arch(arch, patch), shape.global_res, shape.n_global,
                            shape.local_res, shape.n_local, HeadShape(out_dim=shape.out_dim))
    return flops.total / 1e9


def _gpu_placeholders() -> list[dict]:
    """Rows for the GPU sweep this CPU machine cannot run: the paper's figures, ours blank."""
    cfg = PatchBenchConfig()
    rows = []
    for a in cfg.archs:
        for p in cfg.patches:
            shape = cfg.step_shape(p)
            rows.append({"device": "cuda", "arch": a, "patch": p,
                         "infer_res": snap(cfg.infer_res, p), "forward_im_s": None,
                         "paper_v100_im_s": PAPER_V100_IM_S.get((a, p)),
                         "train_crops": _crops_label(shape), "train_im_s": None,
                         "train_gflop_per_img": _step_gflop(a, p, shape),
                         "status": "not measured yet (no GPU on this machine)"})
    return rows


def _trend(rows: list[dict], device: str) -> list[str]:
    """Per architecture: train-step images/s at the largest patch over that at the smallest."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows if r["device"] == device):
        pts = sorted((r["patch"], r["train_im_s"]) for r in rows if r["arch"] == arch
                     and r["device"] == device and r.get("train_im_s"))
        if len(pts) >= 2:
            (p_lo, ims_lo), (p_hi, ims_hi) = pts[0], pts[-1]
            out.append(f"{arch}: train step {ims_hi:.3g} images/s at patch {p_hi} vs "
                       f"{ims_lo:.3g} at patch {p_lo} ({ims_hi / ims_lo:.1f}x)")
    return out


def patch_notes(cfg: PatchBenchConfig, device: torch.device, rows: list[dict]) -> list[str]:
    trend = _trend(rows, device.type)
    notes = ([f"In this run: {'; '.join(trend)}."] if trend else []) + [
        "images/s: forward = backbone only, eval mode, batch "
        f"{cfg.infer_batch}; train = one full DINO step per batch of {cfg.train_batch} images "
        "(each image = all its crops): student fwd+bwd on every crop, teacher fwd on the "
        "globals, loss, AdamW, EMA. Median over timed iterations after warm-up; "
        "*_iqr_ms is the spread (interquartile range) of the per-iteration time; *_best_im_s "
        "is the fastest iteration, the steadier figure on a shared, loaded machine.",
        "Resolutions are snapped to the nearest multiple of the patch size (e.g. 225/95 px "
        "for patch 5, 98 px local crops for patch 14).",
        "MFU = analytic matmul FLOPs (benchmarks/model/flops.py; ViT-S/16 DINO step = 124 GFLOP/img "
        "at 2x224+10x96, K=65536) x images/s / device peak.",
        "Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak "
        "resident set size (it includes the Python runtime and never shrinks, so read "
        "*_extra_mib, the growth during the measurement).",
        "paper_v100_im_s is the DINO paper's V100 inference figure for ViT-S/ViT-B at 224 px; "
        "it is a different machine and model size from any CPU row, shown for scale only.",
    ]
    if device.type != "cuda":
        notes.append("CPU run: GPU rows (ViT-S and ViT-B, 2x224+10x96, K=65536, bf16) are "
                     "not measured yet; their GFLOP/img column is analytic.")
    return notes
