"""``dino-bench feed``: CPU cost per image of the DALI executor's host feed.

The DALI graph is fed by a Python external-source callback (``EpochFeed``): per batch it
reads the encoded files, reads their JPEG sizes, draws every view's parameters (one compiled
``compiled_draw.draw_batch_rows`` call) and turns them into the graph's crop boxes
(``boxes.view_boxes``). DALI decodes and crops in its own threads or on the GPU, and the
photometric finish runs after it; this callback is the part that stays Python, on the host.
At the GPU goal of 8,000 multi-crop images/s it must cost well under 1/8000 s of one core
per image, or the feed needs several processes (``cores_for_8000``).

Rows, all over the same batches of one run:
- ``feed``: ``EpochFeed`` as shipped.
- ``feed (per-sample draw)``: the same callback, its drawing replaced by the plain twin the
  batched draw replaced (``sampling.sample_image_params`` on ``sample_rng(...)``, then
  ``param_row.to_rows`` and ``boxes.view_box``, per sample; reading unchanged). The
  baseline of ``speedup``.
- ``part: ...``: read + size, draw, boxes of the shipped feed, each alone (``--no-parts``
  leaves them out); ``share_of_feed`` is each part's cost over the ``feed`` row's.

Every variant runs untimed warm-up batches (numba's cache load, the file cache), then
``rounds`` rounds; in each round every variant times the same ``batches`` batches with
``time.process_time`` (CPU of this process, so other processes' load on a shared machine
changes it less than wall time would), and the statistics are over rounds.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from ..harness.timing import BenchmarkResult, PlotSpec, describe_machine, summarize
from .pipeline import default_data

GOAL_IMAGES_PER_S = 8000  # the GPU pipeline goal (design notes): multi-crop images/s
FEED, PER_SAMPLE = "feed", "feed (per-sample draw)"
PART_READ, PART_DRAW, PART_BOXES = "part: read + size", "part: draw", "part: boxes"


@dataclass(frozen=True)
class FeedBenchConfig:
    """What the feed benchmark runs. ``data``: an ImageFolder tree or a ``dino-convert
    --format wds`` folder (default: the embedded dataset's train split)."""

    data: str | None = None
    batch_size: int = 64
    local_crops: int = 10
    warmup_batches: int = 2
    batches: int = 10  # timed batches per variant and round
    rounds: int = 7
    parts: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "FeedBenchConfig":
        """A few small batches: a smoke run of the benchmark, not a measurement."""
        base = dict(batch_size=8, warmup_batches=1, batches=2, rounds=2)
        return cls(**{**base, **overrides})


def per_sample_feed_class():
    """``EpochFeed`` with its batched draw replaced by the per-sample Python twin (imported
    lazily: the feed module needs numba)."""
    from pipelines.dali_backend.boxes import view_box
    from pipelines.dali_backend.feed import EpochFeed
    from pipelines.sampling import param_row, sample_image_params, sample_rng

    class PerSampleDrawFeed(EpochFeed):
        """The shipped callback with the draw it replaced: one ``CounterRNG`` and one
        ``sample_image_params`` + ``to_rows`` + ``view_box`` per sample, in Python. Same
        output."""

        def draw_params(self, epoch: int, indices: np.ndarray,
                        wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            boxes, rows = [], []
            for index, (w, h) in zip(indices, wh):
                rng = sample_rng(self.plan.seed, self.plan.rank, epoch, int(index))
                views = sample_image_params(self.spec, int(w), int(h), rng)
                rows.append(param_row.to_rows(views))
                boxes.append(np.stack([view_box(p, int(w), int(h)) for p in views]))
            return np.stack(boxes), np.stack(rows)

    return PerSampleDrawFeed


# ----------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class BatchInputs:
    """One batch's inputs to the parts, computed untimed: the epoch, the dataset indices,
    the image sizes int64 [n, 2] and the drawn rows float64 [n, views, param_row.WIDTH]."""

    epoch: int
    indices: np.ndarray
    wh: np.ndarray
    rows: np.ndarray


def batch_info(position: int, batches_per_epoch: int) -> SimpleNamespace:
    """DALI's ``batch_info`` for the ``position``-th batch since epoch 0 (epochs cycle, so a
    small dataset is read many times)."""
    return SimpleNamespace(epoch_idx=position // batches_per_epoch,
                           iteration=position % batches_per_epoch)


def cpu_seconds_per_image(run: Callable[[int], int], positions: range) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per image of ``run(position) -> images`` over
    ``positions``. ``time.process_time``: every thread of this process, no other process."""
    cpu0, wall0, images = time.process_time(), time.perf_counter(), 0
    for p in positions:
        images += run(p)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / max(images, 1), wall / max(images, 1)


Variants = dict[str, Callable[[int], int]]


def build_variants(cfg: FeedBenchConfig, dataset, spec) -> tuple[Variants, int]:
    """The callables to time, by row name, and the batches per epoch. Each takes a batch
    position and returns the number of images it handled."""
    from pipelines.sampling.compiled_draw import batch_keys, draw_batch_rows, spec_arrays
    from pipelines.sampling.counter_stream import epoch_key
    from pipelines.dali_backend.boxes import view_boxes
    from pipelines.dali_backend.feed import EpochFeed
    from pipelines.order import EpochPlan

    plan = EpochPlan(len(dataset), cfg.batch_size, seed=cfg.seed, rank=0, world_size=1,
                     mode="random", drop_last=True)
    per_epoch = plan.batches_per_epoch
    if per_epoch == 0:
        raise SystemExit(f"dino-bench feed: {len(dataset)} images make no full batch of "
                         f"{cfg.batch_size}; use --batch-size {len(dataset)} or less")
    shipped = EpochFeed(dataset, spec, plan, start_epoch=0)
    twin = per_sample_feed_class()(dataset, spec, plan, start_epoch=0)

    def whole(feed) -> Callable[[int], int]:
        return lambda p: len(feed(batch_info(p, per_epoch))[0])

    variants: Variants = {FEED: whole(shipped), PER_SAMPLE: whole(twin)}
    if not cfg.parts:
        return variants, per_epoch

    arrays = spec_arrays(spec)

    def keys_of(epoch: int, indices: np.ndarray) -> np.ndarray:
        return batch_keys(np.uint64(epoch_key(cfg.seed, 0, epoch)),
                          np.asarray(indices, dtype=np.int64))

    inputs: dict[int, BatchInputs] = {}
    reader = EpochFeed(dataset, spec, plan, start_epoch=0)  # inputs for the parts, untimed
    for p in range(cfg.warmup_batches + cfg.rounds * cfg.batches):
        info = batch_info(p, per_epoch)
        indices = reader.batch_indices(info.epoch_idx, info.iteration)
        wh = reader.read_batch(indices)[3]
        rows = draw_batch_rows(keys_of(info.epoch_idx, indices), wh[:, 0], wh[:, 1], *arrays)
        inputs[p] = BatchInputs(info.epoch_idx, indices, wh, rows)

    def read(p: int) -> int:
        return len(shipped.read_batch(inputs[p].indices)[0])

    def draw(p: int) -> int:
        b = inputs[p]
        return len(draw_batch_rows(keys_of(b.epoch, b.indices), b.wh[:, 0], b.wh[:, 1], *arrays))

    def boxes(p: int) -> int:
        b = inputs[p]
        return len(view_boxes(b.rows, b.wh[:, 0], b.wh[:, 1]))

    variants.update({PART_READ: read, PART_DRAW: draw, PART_BOXES: boxes})
    return variants, per_epoch


PerRound = dict[str, list[float]]  # variant -> seconds per image, one entry per round


def measure_variants(variants: Variants, cfg: FeedBenchConfig
                     ) -> tuple[PerRound, PerRound, dict[str, str]]:
    """Warm every variant up, then ``rounds`` rounds, each timing every variant on the same
    batches (interleaved, so load that comes and goes hits every variant alike). Returns CPU
    and wall seconds per image per round, by variant, and the failures."""
    cpu: PerRound = {name: [] for name in variants}
    wall: PerRound = {name: [] for name in variants}
    failed: dict[str, str] = {}
    for name, run in variants.items():
        try:
            cpu_seconds_per_image(run, range(cfg.warmup_batches))
        except Exception as err:  # reported in the row; the other variants still run
            failed[name] = f"failed: {type(err).__name__}: {err}"[:300]
    for r in range(cfg.rounds):
        first = cfg.warmup_batches + r * cfg.batches
        for name, run in variants.items():
            if name in failed:
                continue
            try:
                c, w = cpu_seconds_per_image(run, range(first, first + cfg.batches))
            except Exception as err:  # reported in the row; the other variants still run
                failed[name] = f"failed: {type(err).__name__}: {err}"[:300]
                continue
            cpu[name].append(c)
            wall[name].append(w)
        print(f"[feed] round {r + 1}/{cfg.rounds}: " + ", ".join(
            f"{n} {cpu[n][-1] * 1e3:.4f} ms" for n in variants if n not in failed), flush=True)
    return cpu, wall, failed


def result_rows(cpu: PerRound, wall: PerRound, failed: dict[str, str],
                cfg: FeedBenchConfig) -> list[dict]:
    """A row per variant: median and IQR over rounds, per-core rate, cores for the goal,
    speedup against the per-sample row (whole callbacks) or share of the feed (parts)."""
    rows = []
    for name in cpu:
        row = {"variant": name, "batch_size": cfg.batch_size,
               "images_per_round": cfg.batch_size * cfg.batches, "rounds": len(cpu[name])}
        if name in failed or not cpu[name]:
            rows.append({**row, "status": failed.get(name, "failed: no round measured")})
            continue
        c, w = summarize(cpu[name]), summarize(wall[name])
        row.update(cpu_ms_per_image=c.median * 1e3, cpu_ms_iqr=c.iqr * 1e3,
                   images_per_core_s=1.0 / c.median,
                   cores_for_8000=GOAL_IMAGES_PER_S * c.median,
                   cpu_share=c.median / w.median, status="ok")
        rows.append(row)
    by_name = {r["variant"]: r for r in rows if r["status"] == "ok"}
    base, feed = by_name.get(PER_SAMPLE), by_name.get(FEED)
    for r in by_name.values():
        if not r["variant"].startswith("part:") and base is not None:
            r["speedup"] = base["cpu_ms_per_image"] / r["cpu_ms_per_image"]
        elif r["variant"].startswith("part:") and feed is not None:
            r["share_of_feed"] = r["cpu_ms_per_image"] / feed["cpu_ms_per_image"]
    return rows


def run_feed_benchmark(cfg: FeedBenchConfig, device: torch.device,
                       argv: list[str] | None = None) -> BenchmarkResult:
    """Every variant over the same batches of ``cfg.data``; a row each (failures included)."""
    from pipelines import AugmentationSpec
    from pipelines.dali_backend.readers import open_dataset

    spec = AugmentationSpec(local_crops=cfg.local_crops)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dino-bench-feed-") as tmp:
        root, described = ((Path(cfg.data), str(cfg.data)) if cfg.data
                           else default_data(Path(tmp)))
        dataset = open_dataset(root)
        variants, per_epoch = build_variants(cfg, dataset, spec)
        cpu, wall, failed = measure_variants(variants, cfg)
    rows = result_rows(cpu, wall, failed, cfg)
    load = (load_before[0], os.getloadavg()[0])
    return BenchmarkResult(
        what="feed", title="DALI host feed: CPU time per image of the external-source callback",
        machine=describe_machine(device, argv),
        baseline=f"`{PER_SAMPLE}`: the same callback drawing each sample in Python "
        "(sample_image_params on sample_rng + to_rows + view_box), in the same run; "
        "speedup is the ratio of median CPU ms per image to it",
        rows=rows, columns=FEED_COLUMNS,
        config={**asdict(cfg), "data": described, "images": len(dataset),
                "batches_per_epoch": per_epoch, "views": spec.num_views,
                "reader": type(dataset).__name__},
        notes=[summary_line(rows)] + feed_notes(spec, load, os.cpu_count() or 1))


FEED_COLUMNS = ["variant", "batch_size", "cpu_ms_per_image", "cpu_ms_iqr", "images_per_core_s",
                "cores_for_8000", "speedup", "share_of_feed", "cpu_share", "status"]

FEED_PLOT = PlotSpec(x="variant", group=("variant",), kind="bar",
                     panels=(("CPU ms per image", ("cpu_ms_per_image",)),
                             ("cores for 8,000 images/s", ("cores_for_8000",))))


def summary_line(rows: list[dict]) -> str:
    """One sentence a reader can take away: the shipped feed's cost and what it saves."""
    by_name = {r["variant"]: r for r in rows if r.get("status") == "ok"}
    feed = by_name.get(FEED)
    if feed is None:
        return "In this run the shipped feed did not run; see status."
    text = (f"In this run the feed costs {feed['cpu_ms_per_image']:.4f} ms of CPU per image "
            f"({feed['images_per_core_s']:,.0f} images per core-second): "
            f"{feed['cores_for_8000']:.2f} cores for {GOAL_IMAGES_PER_S:,} images/s")
    if "speedup" in feed:
        base = by_name[PER_SAMPLE]
        text += (f"; {feed['speedup']:.1f}x less than the per-sample draw "
                 f"({base['cpu_ms_per_image']:.4f} ms, {base['cores_for_8000']:.2f} cores)")
    return text + "."


def feed_notes(spec, load: tuple[float, float], cores: int) -> list[str]:
    busy = max(load) > cores  # this process itself counts for about 1 while it runs
    return [
        "Measured: the host-side external-source callback only (read the encoded bytes, "
        "JPEG sizes from the headers, draw every view's parameters and crop box), called as "
        "DALI calls it, in this process. NOT included: DALI's own decode, crop and resize "
        "(its CPU threads or the GPU), the photometric finish after it, nor the copies to "
        "the device.",
        f"Recipe: {spec.num_global} global + {spec.local_crops} local views per image "
        f"({spec.num_views} parameter rows per image).",
        "cpu_ms_per_image: median over rounds of time.process_time per image (CPU of this "
        "process, every thread); cpu_ms_iqr its interquartile range; images_per_core_s = "
        "1 / median; cores_for_8000 = 8000 / images_per_core_s, the cores the feed alone "
        "needs at the GPU goal; cpu_share = CPU time / wall time (below 1: the process "
        "waited, for the disk or for a core another process held).",
        "Parts: read + size = reading the files and their sizes (the same code as the feed); "
        "draw = batch_keys + draw_batch_rows; boxes = view_boxes; each over the same batches "
        "with its inputs prepared untimed. share_of_feed = part / feed.",
        "Files are read again every epoch; a dataset this small stays in the OS page cache, "
        "so reading is a memory copy here. Disk reads on a dataset larger than RAM add "
        "system time (counted) and waits (not counted: see cpu_share).",
        f"Load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after, on {cores} cores "
        "(this benchmark counts for about 1)"
        + (": the machine was busy with other work, so absolute figures are pessimistic; "
           "the variants ran interleaved over the same batches, so ratios within the run "
           "remain meaningful." if busy else "."),
    ]
