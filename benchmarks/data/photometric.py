"""``dino-bench photometric``: the fused photometric kernel on one multi-crop batch.

The batch of the goal (design notes: "GPU photometric kernel, 64 images x (2 x 224 + 10 x
96) uint8 crops -> normalised bf16, H200, <= 0.1 ms"): ``images`` x 2 global crops 224 px and
``images`` x ``local_crops`` local crops 96 px, uint8 channels last (random levels), with
the parameter rows of real recipes drawn from the counter stream (jitter, grayscale, blur,
solarize at the spec's rates), finished to the spec's mean/std in ``dtype``.

Rows on a GPU, all on the same batch in one run:
- ``cuda finish_many``: both sizes in one call (2 launches), as a loader calls it;
- ``cuda finish per size``: one call per size (4 launches);
- ``torch_ops``: ``finish_views(impl="torch")``, the sync-free torch path: the baseline;
- ``device copy (floor)``: a device-to-device copy moving the floor's bytes (below).
Each is captured in a CUDA graph (``reps`` calls per graph, after warm-up), the graph
replayed ``iters`` times with CUDA events around each replay (``harness.time_fn``); the time
per call is replay time / reps, so launch gaps and Python are not what is measured.

Bytes: the floor is what any implementation must move, every crop read once and every
output written once. The design moves that plus pass A's second read of the crops of views
with jitter (their contrast mean is needed before any output), the rows and the partial
sums. The blur tiles re-read a halo of up to ~1.9x a tile's crop pixels, which neighbouring
tiles of the same view just read: counted as L2 traffic, not DRAM bytes. ``gbps_design``
and ``gbps_floor`` are those byte counts over the median time.

Without a GPU the command is a smoke test of the same code paths on a small batch: the
host twin (``host_twin``, the kernel's header built for the CPU), the numba kernel and the
torch ops, timed on the CPU; rows say "no GPU".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..harness.timing import (BenchmarkResult, PlotSpec, Timing, describe_machine, summarize,
                      time_fn)

GOAL_MS = 0.1
BASELINE = "torch_ops"


@dataclass(frozen=True)
class PhotometricBenchConfig:
    images: int = 64
    local_crops: int = 10
    dtype: str = "bfloat16"
    iters: int = 200   # timed graph replays (GPU) or calls (CPU)
    warmup: int = 20
    reps: int = 10     # calls captured in one graph
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "PhotometricBenchConfig":
        """Two images, a few calls: a smoke run, not a measurement."""
        return cls(**{**dict(images=2, local_crops=2, iters=3, warmup=1, reps=2), **overrides})


def make_batch(cfg: PhotometricBenchConfig, device: torch.device, spec
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(global crops [2B, 224, 224, 3], rows [2B, WIDTH]), (local crops, rows)] on ``device``:
    random levels, rows of real recipes from the counter stream, view-major."""
    from pipelines.sampling import param_row, sample_image_params, sample_rng

    recipes = [sample_image_params(spec, 500, 375, sample_rng(cfg.seed, 0, 0, i))
               for i in range(cfg.images)]
    g = torch.Generator().manual_seed(cfg.seed)
    batches = []
    for views in (range(spec.num_global), range(spec.num_global, spec.num_views)):
        size = spec.views()[views[0]].size
        rows = param_row.to_rows([r[v] for v in views for r in recipes])
        crops = torch.randint(0, 256, (len(rows), size, size, 3), generator=g,
                              dtype=torch.uint8)
        batches.append((crops.to(device), torch.from_numpy(rows).to(device)))
    return batches


def byte_counts(batches, out_bytes: int) -> tuple[int, int]:
    """(floor, design) bytes of one call: see the module docstring."""
    from pipelines.sampling.param_row import COL

    floor = design = 0
    for crops, rows in batches:
        n, size = crops.shape[0], crops.shape[1]
        jittered = int((rows[:, COL.jitter] != 0).sum())  # host sync: outside timing
        floor += n * size * size * (3 + 3 * out_bytes)
        design += (n * size * size * (3 + 3 * out_bytes) + jittered * size * size * 3
                   + rows.numel() * rows.element_size() + n * -(-size // 16) * 4 * 2)
    return floor, design


def graph_timing(fn: Callable[[], object], device: torch.device, cfg) -> tuple[Timing, bool]:
    """Per-call time of ``fn`` from CUDA-graph replays of ``cfg.reps`` calls each, and True;
    (eager per-call time with CUDA events, False) when ``fn`` cannot be captured."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside capture: libraries load, memory is reserved
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(cfg.reps):
                fn()
    except RuntimeError:
        torch.cuda.synchronize(device)  # host sync: a failed capture, outside timing
        return time_fn(fn, device, warmup=cfg.warmup, iters=cfg.iters), False
    t = time_fn(graph.replay, device, warmup=cfg.warmup, iters=cfg.iters)
    return summarize([s / cfg.reps for s in t.samples]), True


def _gpu_variants(batches, spec) -> dict[str, tuple[Callable[[], object], int]]:
    from pipelines.photometric import cuda
    from pipelines.photometric.finish import finish_views

    variants: dict[str, tuple[Callable[[], object], int]] = {}
    if cuda.unavailable_reason() is None:
        variants["cuda finish_many"] = (lambda: cuda.finish_many(batches, spec), 2)
        variants["cuda finish per size"] = (
            lambda: [cuda.finish(c, r, spec) for c, r in batches], 2 * len(batches))
    variants[BASELINE] = (lambda: [finish_views(c, r, spec, impl="torch") for c, r in batches],
                          0)
    return variants


def _cpu_variants(batches, spec) -> dict[str, tuple[Callable[[], object], int]]:
    from pipelines.photometric import host_twin
    from pipelines.photometric.finish import finish_views

    variants: dict[str, tuple[Callable[[], object], int]] = {}
    if host_twin.unavailable_reason() is None:
        variants["host twin"] = (lambda: host_twin.finish_many(batches, spec), 0)
    variants["numba cpu_kernel"] = (
        lambda: [finish_views(c, r, spec, impl="cpu_kernel") for c, r in batches], 0)
    variants[BASELINE] = (lambda: [finish_views(c, r, spec, impl="torch") for c, r in batches],
                          0)
    return variants


def run_photometric_benchmark(cfg: PhotometricBenchConfig, device: torch.device,
                              argv: list[str] | None = None) -> BenchmarkResult:
    from pipelines.spec import AugmentationSpec

    spec = AugmentationSpec(local_crops=cfg.local_crops, output_dtype=cfg.dtype)
    gpu = device.type == "cuda"
    batches = make_batch(cfg, device, spec)
    out_bytes = torch.empty(0, dtype=getattr(torch, cfg.dtype)).element_size()
    floor, design = byte_counts(batches, out_bytes)
    variants = _gpu_variants(batches, spec) if gpu else _cpu_variants(batches, spec)
    outputs = {name: [o.float() for o in fn()] for name, (fn, _) in variants.items()}
    reference = outputs[BASELINE]
    timings, rows = {}, []
    if gpu and "cuda finish_many" not in variants:
        from pipelines.photometric import cuda
        rows.append({"impl": "cuda finish_many",
                     "status": f"not run: {cuda.unavailable_reason()}"})
    for name, (fn, launches) in variants.items():
        graph = False
        if gpu:
            timings[name], graph = graph_timing(fn, device, cfg)
        else:
            timings[name] = time_fn(fn, device, warmup=cfg.warmup, iters=cfg.iters)
        diff = max(float((a - b).abs().max()) for a, b in zip(outputs[name], reference))
        rows.append({"impl": name, "status": "ok" if gpu else "no GPU: CPU smoke test",
                     "cuda_graph": graph if gpu else None, "launches": launches or None,
                     "max_abs_diff_vs_torch": diff})
    if gpu:
        src = torch.empty(floor // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        timings["device copy (floor)"], graph = graph_timing(lambda: dst.copy_(src), device, cfg)
        rows.append({"impl": "device copy (floor)", "status": "ok", "cuda_graph": graph,
                     "launches": 1})
    base = timings[BASELINE].median
    for row in rows:
        if row["impl"] not in timings:
            continue
        t = timings[row["impl"]]
        moved = floor if row["impl"].startswith("device copy") else design
        row.update(t.as_row("time"), design_mb=moved / 1e6, gbps_design=moved / t.median / 1e9,
                   gbps_floor=floor / t.median / 1e9, speedup_vs_torch=base / t.median,
                   meets_goal=(t.median * 1e3 <= GOAL_MS) if gpu else None)
    views = len(batches[0][0]) + len(batches[1][0])
    notes = [
        f"Batch: {cfg.images} images x ({spec.num_global} x {batches[0][0].shape[1]} px + "
        f"{cfg.local_crops} x {batches[1][0].shape[1]} px) = {views} views, uint8 -> "
        f"{cfg.dtype}; floor {floor / 1e6:.1f} MB (crops read once, outputs written once), "
        f"design {design / 1e6:.1f} MB (plus the contrast pass's read of jittered views, "
        "rows, partial sums; blur halos counted as L2 traffic).",
        "time: per call; " + (f"CUDA graph of {cfg.reps} calls replayed {cfg.iters} times "
                              f"after {cfg.warmup} warm-up replays, CUDA events per replay "
                              "(cuda_graph False: the calls could not be captured and were "
                              "timed one by one with CUDA events, launch gaps included)."
                              if gpu else "perf_counter per call on the CPU."),
        f"goal: <= {GOAL_MS} ms per call on an H200 (design notes, performance.md).",
        "max_abs_diff_vs_torch: largest difference of the normalised output from the torch "
        "ops' on this batch (the output dtype's rounding included).",
    ]
    if not gpu:
        notes.append("No GPU: a smoke test of the host twin, the numba kernel and the torch "
                     "ops on a small batch; these are CPU figures, not the kernel's.")
    return BenchmarkResult(
        what="photometric", title="Photometric finish: one multi-crop batch, uint8 -> normalised",
        machine=describe_machine(device, argv),
        baseline=f"`{BASELINE}`: finish_views(impl='torch') on the same batch in the same run",
        rows=rows, columns=COLUMNS, notes=notes, config=asdict(cfg))


COLUMNS = ["impl", "status", "cuda_graph", "launches", "time_median_ms", "time_iqr_ms", "time_min_ms",
           "time_max_ms", "time_n", "design_mb", "gbps_design", "gbps_floor",
           "speedup_vs_torch", "meets_goal", "max_abs_diff_vs_torch"]

PHOTOMETRIC_PLOT = PlotSpec(x="impl", group=("impl",), kind="bar",
                            panels=(("ms per call (median)", ("time_median_ms",)),
                                    ("GB/s (design bytes)", ("gbps_design",))))
