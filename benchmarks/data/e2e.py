"""``dino-bench e2e``: a real training run per backend, and how long it waits for data.

For each backend (and the reference executor, first, as the baseline) the same model is
trained on batches from ``pipelines.build_loader`` over the same data (by default the
ImageNet-like benchmark corpus, ``bench_data``), each backend in its own process
(``backend_runs``: a failure is a row, the others still run; results are written after each).
Reported: training images/s, the share of step time spent waiting for data, and the CPU
cores the run kept busy. Each recipe of ``recipes`` (``recipe`` column; DINO and DINOv2 by
default, DINOv2 with its masks from the loader: ``model.trainstep.recipe_sections``) runs the
same backends in the same run, DINO first; ``speedup`` is against the reference executor of
the same recipe. Two engines:

- ``trainer`` (default): ``dino_core.train.train`` itself, with its own accounting (what it
  logs is what is reported; its first steps are included). With ``seconds`` the run is
  stopped ``seconds`` after its first logged step and the figures are those of its last
  logged step (every ``log_every`` steps); otherwise it runs ``warmup_steps + steps`` steps.
- ``loop``: a loader + ``dino_core.train.step.TrainStep`` loop with warm-up steps left out,
  for at least ``steps`` steps and ``seconds``, accounted by the trainer's own clock
  (``dino_core.train.data_wait``): on the CPU the data wait is the host time waiting for the
  next batch over the iteration time; on a GPU it is the idle gap of the stream between one
  step's end and the next batch being in hand (CUDA events, one host sync at the end) over
  the stream's total time: the time the GPU really waited for a batch. ``fetch_*_ms`` are
  these per-step waits, ``step_*_ms`` the rest of each step.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dino_core.train.data_wait import DataWaitClock

from ..harness.runs import (BackendUnavailable, RunLimits, add_ratios, for_each_backend,
                           tree_cpu_seconds)
from ..harness.bench_data import BenchData, DataChoice, prepare_data
from ..harness.timing import BenchmarkResult, PlotSpec, cpu_cores, describe_machine, summarize
from .pipeline import (GPU_WORKERS, QUICK_CORPUS_IMAGES, EpochCycler, backend_order,
                       opened_loader)
from ..model.trainstep import RECIPES, StepShape, build_train_step, recipe_sections, snap

ENGINES = ("trainer", "loop")
MAX_IMAGES_PER_S = 20_000  # bound used to size a time-limited trainer run's epochs
TRAIN_START_UP_S = 60.0    # GPU default budget beyond the seconds: spawn, model, loader, JIT


@dataclass(frozen=True)
class E2EConfig:
    """The run: model, batch, length, and the backends to feed it."""

    backends: tuple[str, ...] = ("dali",)
    reference: str = "reference"
    source: DataChoice = field(default_factory=DataChoice)
    arch: str = "vit_small"
    patch: int = 16
    batch_size: int = 64
    num_workers: int = field(default_factory=cpu_cores)
    local_crops: int = 10
    global_size: int | None = None   # None: the recipe's 224 px
    local_size: int | None = None    # None: the recipe's 96 px
    out_dim: int = 65536
    warmup_steps: int = 5
    steps: int = 50
    seconds: float = 0.0      # > 0: train this long (see the module docstring)
    log_every: int = 20       # trainer with seconds: steps between its logged figures
    precision: str = "auto"
    engine: str = "trainer"   # trainer: dino_core.train.train; loop: loader + step, CUDA events
    recipes: tuple[str, ...] = RECIPES  # each trains on every backend, DINO first
    limits: RunLimits = field(default_factory=RunLimits)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not self.recipes or not set(self.recipes) <= set(RECIPES):
            raise ValueError(f"recipes must be some of {RECIPES}, got {self.recipes!r}")
        if self.seconds > 0 and self.engine == "trainer" and not self.limits.isolate:
            raise ValueError("--seconds with the trainer engine stops each run from outside: "
                             "it needs isolated runs (drop --in-process, or use --steps)")

    @classmethod
    def quick(cls, **overrides) -> "E2EConfig":
        """ViT-tiny, 64 px + 2 x 32 px crops, a few steps of batch 4: a CPU-sized smoke run."""
        base = dict(backends=("reference",), arch="vit_tiny", batch_size=4,
                    num_workers=min(2, cpu_cores()), local_crops=2, global_size=64,
                    local_size=32, out_dim=4096, warmup_steps=1, steps=3, log_every=2,
                    source=DataChoice(corpus_images=QUICK_CORPUS_IMAGES))
        return cls(**{**base, **overrides})

    @classmethod
    def gpu(cls, **overrides) -> "E2EConfig":
        """A CUDA device: ViT-S/16, batch 64, <= 8 loader threads, 40 s of training per
        backend (the reference and one backend fit in about 2 minutes); a run still going
        ``TRAIN_START_UP_S`` after its seconds is killed."""
        base = dict(num_workers=min(GPU_WORKERS, cpu_cores()), seconds=40.0, warmup_steps=10)
        cfg = cls(**{**base, **overrides})
        if "limits" in overrides or cfg.seconds <= 0:
            return cfg
        return replace(cfg, limits=RunLimits(time_budget=TRAIN_START_UP_S + cfg.seconds))


# ----------------------------------------------------------------------------- loop engine
def train_and_account(loader, step, steps: int, warmup: int, device: torch.device,
                      seconds: float = 0.0) -> dict:
    """Run ``warmup`` untimed steps, then >= ``steps`` steps and >= ``seconds``, fed by
    ``loader``; images/s, data-wait share and CPU cores busy of the timed steps.

    The data wait is the trainer's own accounting (``dino_core.train.data_wait``): host
    clocks on the CPU, on a GPU CUDA events that count the time the GPU sat idle for want of
    a batch; its per-step figures give the step and wait medians."""
    batches = EpochCycler(loader)
    clock = DataWaitClock(device, keep_steps=True)
    timed = images = 0
    t_begin = cpu0 = 0.0
    for i in itertools.count():
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # host sync: timed steps start from idle
            t_begin, cpu0 = time.perf_counter(), tree_cpu_seconds()
            clock.start()
        if i >= warmup and timed >= max(1, steps) and time.perf_counter() - t_begin >= seconds:
            break
        batch = next(batches)
        if i >= warmup:
            clock.batch_ready()
        step.run(batch)
        if i >= warmup:
            clock.step_enqueued()
            images += batch.size
            timed += 1
    wait, total = clock.totals()  # host sync on GPU: the one wait, at the end
    wall, cpu = time.perf_counter() - t_begin, tree_cpu_seconds() - cpu0
    step_stats = summarize([wall_i - wait_i for wait_i, wall_i in clock.per_step])
    wait_stats = summarize([wait_i for wait_i, _ in clock.per_step])
    return {"steps": timed, "images": images, "images_per_s": images / wall,
            "data_wait_share": wait / max(total, 1e-9), "cores_used": cpu / wall,
            "wall_s": wall, "step_median_ms": step_stats.median * 1e3,
            "step_iqr_ms": step_stats.iqr * 1e3, "fetch_median_ms": wait_stats.median * 1e3,
            "fetch_max_ms": wait_stats.max * 1e3}


def measure_loop(backend: str, path: Path, cfg: E2EConfig, spec, shape: StepShape,
                 device: torch.device, recipe: str = "dino") -> dict:
    """The loop engine's row fields (runs in the backend's own process)."""
    with opened_loader(backend, path, batch_size=cfg.batch_size, spec=spec, device=device,
                       num_workers=cfg.num_workers) as loader:
        step, _ = build_train_step(cfg.arch, cfg.patch, shape, device, cfg.precision,
                                   recipe=recipe)
        stats = train_and_account(loader, step, cfg.steps, cfg.warmup_steps, device,
                                  cfg.seconds)
    return {**stats, "engine": "loop", "loss_impl": step.loss_impl}


# ----------------------------------------------------------------------------- trainer
def trainer_config(backend: str, path: Path, cfg: E2EConfig, spec, device: torch.device,
                   out: Path, images: int, recipe: str = "dino"):
    """The ``TrainConfig`` of one backend's run of ``recipe``: ``warmup_steps + steps``
    iterations, or (with ``seconds``) enough epochs of the ``images``-image data to outlast
    them."""
    from dino_core.config import DataConfig, ModelConfig, TrainConfig

    per_epoch = max(1, images // cfg.batch_size)
    if cfg.seconds > 0:
        total = math.ceil(cfg.seconds * MAX_IMAGES_PER_S / cfg.batch_size) + cfg.warmup_steps
        epochs, cap, log_every = math.ceil(total / per_epoch) + 1, 0, cfg.log_every
    else:
        total = cfg.warmup_steps + cfg.steps
        epochs = math.ceil(total / per_epoch)
        cap, log_every = math.ceil(total / epochs), total
    return TrainConfig(
        model=ModelConfig(arch=cfg.arch, patch_size=cfg.patch, out_dim=cfg.out_dim),
        data=DataConfig(path=str(path), backend=backend, batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, aug=spec),
        epochs=epochs, max_iters_per_epoch=cap, output_dir=str(out), device=str(device),
        precision=cfg.precision, log_every=log_every, knn_eval=False, progress=False,
        **recipe_sections(recipe, cfg.patch)[0])


def measure_trainer(backend: str, path: Path, cfg: E2EConfig, spec, device: torch.device,
                    runs: Path, images: int, recipe: str = "dino") -> dict:
    """``dino_core.train.train`` for one backend (in its own process); its summary."""
    from dino_core.train.loop import train

    run_cfg = trainer_config(backend, path, cfg, spec, device, runs / recipe / backend, images,
                             recipe)
    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    try:
        summary = train(run_cfg)
    except ImportError as err:  # build_loader: the backend's library or loader is missing
        raise BackendUnavailable(f"ImportError: {err}") from err
    wall = time.perf_counter() - t0
    return {**trainer_figures(summary, cfg.batch_size), "wall_s": wall,
            "cores_used": (tree_cpu_seconds() - cpu0) / wall}


def trainer_figures(record: dict, batch_size: int) -> dict:
    """Row fields from what the trainer reports (its summary or a metrics.jsonl record)."""
    steps = int(record.get("iterations", record.get("iteration", 0)))
    row = {"steps": steps, "images": steps * batch_size,
           "images_per_s": record["images_per_s"], "data_wait_share": record["data_wait_share"],
           "engine": "dino_core.train.loop.train"}
    row.update({k: v for k, v in record.items() if "wait" in k and k not in row})
    return row


def read_metrics(path: Path) -> list[dict]:
    """The complete records of a trainer's ``metrics.jsonl`` (a line being written is left)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def steady_figures(first: dict, last: dict, batch_size: int) -> dict:
    """images/s and data-wait share between two logged steps of one trainer run, from its
    cumulative figures (images = iteration x batch; its wall time = images / images_per_s;
    its wait = data_wait_share x its wall time): the steps before ``first`` (start-up, JIT
    compilation, the first batches) are left out, as warm-up is elsewhere."""
    def totals(rec: dict) -> tuple[float, float, float]:
        images = rec["iteration"] * batch_size
        wall = images / rec["images_per_s"] if rec["images_per_s"] > 0 else 0.0
        return images, wall, rec["data_wait_share"] * wall
    (i0, w0, d0), (i1, w1, d1) = totals(first), totals(last)
    span = w1 - w0
    if span <= 0:
        return {}
    return {"images_per_s": (i1 - i0) / span, "data_wait_share": (d1 - d0) / span,
            "warmup_steps_left_out": int(first["iteration"])}


class TrainerWatch:
    """Polled while a trainer runs in its own process: once ``seconds`` have passed since its
    first logged step, returns the row of its last logged step and stops the run.

    images_per_s and data_wait_share are the trainer's own, over the steps between its first
    and last logged step (``steady_figures``); its cumulative figures, first steps included,
    are kept as ``cumulative_*``. cores_used: CPU of its process tree over the same wall time
    (epoch-end checkpoint saves included)."""

    def __init__(self, metrics: Path, seconds: float, batch_size: int):
        self.metrics, self.seconds, self.batch_size = metrics, seconds, batch_size
        self.first: tuple[float, float, int] | None = None  # (time, cpu, records seen)

    def __call__(self, pid: int) -> dict | None:
        records = read_metrics(self.metrics)
        if not records:
            return None
        now = time.monotonic()
        try:
            cpu = tree_cpu_seconds(pid)
        except Exception:  # the process is gone: the runner reports how it died
            return None
        if self.first is None:
            self.first = (now, cpu, len(records))
            return None
        if now - self.first[0] < self.seconds or len(records) <= self.first[2]:
            return None
        wall, last = now - self.first[0], records[-1]
        cumulative = trainer_figures(last, self.batch_size)
        return {**cumulative, "cumulative_images_per_s": cumulative["images_per_s"],
                "cumulative_data_wait_share": cumulative["data_wait_share"],
                **steady_figures(records[self.first[2] - 1], last, self.batch_size),
                "epochs": last["epoch"] + 1, "wall_s": wall,
                "cores_used": (cpu - self.first[1]) / wall,
                "stopped": f"after {wall:.0f} s of logged training"}


# ----------------------------------------------------------------------------- running
def run_e2e_benchmark(cfg: E2EConfig, device: torch.device, argv: list[str] | None = None,
                      on_partial=None) -> BenchmarkResult:
    """Per recipe, the reference-fed run first, then each requested backend; one row each.
    ``on_partial(result so far)`` runs after every backend."""
    from pipelines import AugmentationSpec

    spec = AugmentationSpec(local_crops=cfg.local_crops)
    spec = spec.with_overrides(
        global_views=tuple(replace(v, size=cfg.global_size or v.size) for v in spec.global_views),
        local_view=replace(spec.local_view, size=cfg.local_size or spec.local_view.size))
    shape = StepShape(batch=cfg.batch_size, global_res=snap(spec.global_views[0].size, cfg.patch),
                      local_res=snap(spec.local_view.size, cfg.patch), n_local=cfg.local_crops,
                      out_dim=cfg.out_dim)
    if (shape.global_res, shape.local_res) != (spec.global_views[0].size, spec.local_view.size):
        raise ValueError(f"patch {cfg.patch} does not divide the crop sizes "
                         f"{spec.global_views[0].size}/{spec.local_view.size} of the recipe")
    with tempfile.TemporaryDirectory(prefix="dino-bench-e2e-") as tmp:
        data = prepare_data(cfg.source, Path(tmp))
        order = backend_order(cfg.backends, cfg.reference)
        path_for = data.resolve(order)  # first: builders fork before CUDA starts here
        machine = describe_machine(device, argv)
        runs = Path(tmp) / "runs"
        timed_trainer = cfg.engine == "trainer" and cfg.seconds > 0

        def result(rows: list[dict]) -> BenchmarkResult:
            rows = [dict(r) for r in rows]
            for recipe in cfg.recipes:  # speedup: against the same recipe's reference run
                add_ratios([r for r in rows if r["recipe"] == recipe], cfg.reference,
                           {"speedup": "images_per_s"})
            return e2e_result(cfg, device, machine, data, rows)

        done: list[dict] = []
        for recipe in cfg.recipes:
            masking = recipe_sections(recipe, cfg.patch)[1]
            run_spec = spec.with_overrides(masking=masking)
            if cfg.engine == "trainer":
                measure = functools.partial(measure_trainer, cfg=cfg, spec=run_spec,
                                            device=device, runs=runs, images=data.stats.images,
                                            recipe=recipe)
            else:
                measure = functools.partial(measure_loop, cfg=cfg, spec=run_spec, shape=shape,
                                            device=device, recipe=recipe)

            def watch_for(backend: str, recipe: str = recipe):
                return (TrainerWatch(runs / recipe / backend / "metrics.jsonl", cfg.seconds,
                                     cfg.batch_size) if timed_trainer else None)

            done += for_each_backend(
                order, {"recipe": recipe, "device": device.type, "arch": cfg.arch,
                        "patch": cfg.patch, "batch_size": cfg.batch_size,
                        "num_workers": cfg.num_workers},
                path_for, measure, f"e2e {recipe}", cfg.limits,
                on_row=(lambda rows, before=list(done): on_partial(result(before + rows)))
                if on_partial else None,
                watch_for=watch_for)
        return result(done)


def e2e_result(cfg: E2EConfig, device: torch.device, machine, data: BenchData,
               rows: list[dict]) -> BenchmarkResult:
    settings = {k: v for k, v in asdict(cfg).items() if k != "source"}  # data: see below
    return BenchmarkResult(
        what="e2e", title="End-to-end training throughput and data wait per backend",
        machine=machine, baseline=f"the same run fed by the `{cfg.reference}` executor, in "
        "the same run", rows=rows, columns=E2E_COLUMNS, config={**settings, "data": data.kind},
        **data.result_fields(),
        notes=E2E_NOTES + data.notes() + ([] if device.type == "cuda" else [
            "CPU run: the model and the loader workers share the same cores, so the data "
            "wait here says little about a GPU run; GPU figures: not measured yet."]))


E2E_COLUMNS = ["recipe", "backend", "engine", "device", "arch", "patch", "batch_size", "num_workers",
               "steps", "epochs", "images_per_s", "speedup", "data_wait_share", "cores_used",
               "wall_s", "cumulative_images_per_s", "cumulative_data_wait_share",
               "step_median_ms", "fetch_median_ms", "status"]
E2E_NOTES = [
    "engine dino_core.train.train: the real trainer and its own accounting (its epoch-end "
    "checkpoint saves are outside its figures). With --seconds it is stopped once the seconds "
    "have passed since its first logged step, and images_per_s / data_wait_share are its own "
    "figures between its first and last logged steps (start-up, JIT and first batches left "
    "out; cumulative_* keep them in); with --steps they are its whole-run figures. Engine "
    "loop: loader + TrainStep, warm-up excluded, per-step statistics (step_median_ms, "
    "fetch_median_ms).",
    "data_wait_share: the share of step time spent waiting for a batch (goal on a GPU with "
    "ViT-S/16: <= 2%). images_per_s: training images per second. cores_used: CPU seconds of "
    "the run's process tree (model, loader threads and workers) per wall second. Each backend "
    "runs in its own process.",
]
E2E_PLOT = PlotSpec(x="backend", group=("recipe", "backend"), kind="bar",
                    panels=(("training images/s", ("images_per_s",)),
                            ("share of step time waiting for data", ("data_wait_share",))))
