"""``dino-bench stages``: where the FFCV CPU executor's time goes, per image, stage by stage,
next to each stage's floor.

The executor's op (``pipelines.ffcv_backend.decode_once``, ``finish=True``) does, per image:
decode the JPEG once, draw every view's parameter row, and per view cut + resize the crop
(``resample.resize_crop``) and run the photometric ops + normalisation
(``photometric.cpu_kernel.photometric_view``); the loader then copies the finished float32
views out of FFCV's buffer. This benchmark calls those very compiled functions on one core,
on ``images`` images of the corpus prepared exactly as ``dino-convert`` stores them, in
memory (no file reads), with the recipe's own parameter rows (the stream of sample i), and
reports ms per image:

- ``decode``: FFCV's libjpeg-turbo binding (what the op calls); floor: libjpeg-turbo alone
  as the fastest of PIL and OpenCV decode the same bytes;
- ``draw``: every view's parameter row (no floor);
- ``crop+resize S``: every view of size S (bicubic, antialiased, flip); floor: one resize
  pass of the same boxes, OpenCV ``INTER_LINEAR`` on one thread (no antialias: a lower
  bound, not an equal);
- ``photometric S (as drawn)``: the fused kernel on the views of size S with the drawn rows;
  floor: one memory pass per view (uint8 crop -> float32 planes, numpy ``copyto``);
- ``... normalise only`` and the marginal cost of each op under the recipe's rates
  (``grayscale``, ``blur``, ``solarize``, ``colour jitter``: the drawn rows minus the same
  rows with that op switched off); inside the jitter, ``brightness``, ``contrast`` (with its
  luma mean), ``saturation`` and ``hue`` each as one isolated pass over a jittered view
  (the kernel's own row helpers), times the jittered views per image;
- ``collate+copy``: the loader's copy of the finished views out of FFCV's buffer, into
  fresh memory (page faults included: the loader before ``RecycledOutputs``) and into a
  dropped batch's tensor (the loader now); floor: writing the same bytes once into memory
  already mapped;
- ``op total``: decode + draw + every view's cut and finish, as the op runs them.

Each figure is the best of ``repeats`` passes over the images, in CPU time of the measuring
thread (so another process's load on a shared machine lengthens it little; memory and
cache contention still do). ``x_floor`` = ms / floor ms.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..harness.bench_data import DataChoice, measure_on_data
from ..harness.timing import BenchmarkResult, PlotSpec

STAGE_COLUMNS = ["stage", "size", "views", "ms_per_image", "floor", "floor_ms_per_image",
                 "x_floor"]
STAGES_PLOT = PlotSpec(x="stage", group=("stage",), kind="bar",
                       panels=(("ms per image", ("ms_per_image", "floor_ms_per_image")),))


@dataclass(frozen=True)
class StagesBenchConfig:
    source: DataChoice = field(default_factory=DataChoice)
    images: int = 256     # images of the corpus, held in memory
    repeats: int = 5      # passes per figure, the best reported
    local_crops: int = 10
    max_side: int = 500   # as dino-convert stores them
    quality: int = 90


@dataclass
class Sample:
    """One stored image: its bytes (and as uint8), size, decoded pixels [H, W, 3], stream
    key, drawn rows [views, WIDTH] and its cut crops (uint8 [S, S, 3] per view)."""

    raw: bytes
    data: np.ndarray
    height: int
    width: int
    pixels: np.ndarray
    key: np.uint64
    rows: np.ndarray
    crops: list


def load_samples(root: Path, cfg: StagesBenchConfig, spec) -> list[Sample]:
    """``cfg.images`` files spread evenly over the folder, as ``dino-convert`` stores them,
    decoded once, with the rows the op draws for dataset index i in epoch 0 (seed 0)."""
    from PIL import Image

    from pipelines.convert.prepare import prepare_image
    from pipelines.ffcv_backend.resample import filter_code, resize_crop
    from pipelines.folder import scan_image_folder
    from pipelines.sampling.compiled_draw import draw_image_rows, sample_key_nb, spec_arrays
    from pipelines.sampling.counter_stream import epoch_key
    from pipelines.sampling.param_row import WIDTH

    files = [p for p, _ in scan_image_folder(root).samples]
    step = max(1, len(files) // cfg.images)
    arrays, kind = spec_arrays(spec), filter_code(spec.interpolation)
    epoch = np.uint64(epoch_key(0, 0, 0))
    sizes = [v.size for v in spec.views()]
    out = []
    for i, path in enumerate(files[::step][:cfg.images]):
        stored = prepare_image(str(path), cfg.max_side, cfg.quality)
        with Image.open(io.BytesIO(stored.data)) as im:
            pixels = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        key = np.uint64(sample_key_nb(epoch, np.int64(i)))
        rows = np.empty((len(sizes), WIDTH), np.float64)
        draw_image_rows(key, np.int64(stored.width), np.int64(stored.height), arrays.views,
                        arrays.common, rows)
        crops = []
        for size, row in zip(sizes, rows):
            crop = np.empty((size, size, 3), np.uint8)
            resize_crop(pixels, *_box(row), crop, kind)
            crops.append(crop)
        out.append(Sample(stored.data, np.frombuffer(stored.data, np.uint8), stored.height,
                          stored.width, pixels, key, rows, crops))
    return out


def _box(row: np.ndarray) -> tuple[int, int, int, int, bool]:
    """(top, left, height, width, flip) of a parameter row, as the op passes them."""
    from pipelines.sampling.param_row import COL
    return (int(row[COL.top]), int(row[COL.left]), int(row[COL.height]), int(row[COL.width]),
            bool(row[COL.flip] != 0.0))


def best_ms(fn, samples: list[Sample], repeats: int) -> float:
    """Best of ``repeats`` passes of ``fn(sample)`` over every sample, in ms of this thread's
    CPU time per image (user + system: page faults count; time waiting for a core while
    other processes run does not)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for s in samples:
            fn(s)
        best = min(best, time.thread_time() - t0)
    return 1e3 * best / len(samples)


def _row(stage: str, size, views, ms: float, floor: str = "", floor_ms: float = float("nan")
         ) -> dict:
    return {"stage": stage, "size": size, "views": views, "ms_per_image": round(ms, 4),
            "floor": floor, "floor_ms_per_image": round(floor_ms, 4),
            "x_floor": round(ms / floor_ms, 2) if floor_ms == floor_ms and floor_ms > 0
            else float("nan")}


def decode_rows(samples: list[Sample], repeats: int) -> list[dict]:
    """FFCV's decode call, and libjpeg-turbo alone (fastest of PIL and OpenCV)."""
    import cv2
    from PIL import Image

    from pipelines.ffcv_backend.decode_once import decode_jpeg

    buf = np.empty(max(s.height * s.width * 3 for s in samples), np.uint8)

    def ffcv(s: Sample) -> None:
        decode_jpeg(s.data, buf[:s.height * s.width * 3], s.height, s.width)

    def pil(s: Sample) -> None:
        with Image.open(io.BytesIO(s.raw)) as im:
            im.load()

    def opencv(s: Sample) -> None:
        cv2.imdecode(s.data, cv2.IMREAD_COLOR)

    cv2.setNumThreads(1)
    ms = best_ms(ffcv, samples, repeats)
    floors = {"PIL decode (libjpeg-turbo)": best_ms(pil, samples, repeats),
              "OpenCV imdecode (libjpeg-turbo)": best_ms(opencv, samples, repeats)}
    name = min(floors, key=floors.get)
    return [_row("decode (FFCV's libjpeg-turbo binding)", "-", 1, ms, name, floors[name])]


def draw_row(samples: list[Sample], spec, repeats: int) -> dict:
    from pipelines.sampling.compiled_draw import draw_image_rows, spec_arrays

    arrays = spec_arrays(spec)
    out = np.empty_like(samples[0].rows)

    def draw(s: Sample) -> None:
        draw_image_rows(s.key, np.int64(s.width), np.int64(s.height), arrays.views,
                        arrays.common, out)
    return _row("draw parameters", "-", spec.num_views, best_ms(draw, samples, repeats))


def resize_rows(samples: list[Sample], spec, repeats: int) -> list[dict]:
    """Per run of same-size views: the op's crop+resize, and one OpenCV bilinear pass."""
    import cv2

    from pipelines.ffcv_backend.resample import filter_code, resize_crop

    kind, rows = filter_code(spec.interpolation), []
    for first, k, size in spec.size_runs():
        dst = np.empty((size, size, 3), np.uint8)

        def ours(s: Sample) -> None:
            for v in range(first, first + k):
                resize_crop(s.pixels, *_box(s.rows[v]), dst, kind)

        def floor(s: Sample) -> None:
            for v in range(first, first + k):
                top, left, h, w, _ = _box(s.rows[v])
                cv2.resize(s.pixels[top:top + h, left:left + w], (size, size), dst=dst,
                           interpolation=cv2.INTER_LINEAR)
        rows.append(_row(f"crop+resize {size} px ({spec.interpolation})", size, k,
                         best_ms(ours, samples, repeats),
                         "one resize pass (OpenCV INTER_LINEAR, 1 thread)",
                         best_ms(floor, samples, repeats)))
    return rows


def _switched(rows: np.ndarray, off: tuple[int, ...]) -> np.ndarray:
    """``rows`` with the 0/1 columns ``off`` set to 0 (those ops skipped)."""
    out = rows.copy()
    out[:, list(off)] = 0.0
    return out


def photometric_rows(samples: list[Sample], spec, repeats: int) -> list[dict]:
    """Per view size: the fused kernel as drawn, normalise only, and each op's marginal cost
    (the drawn rows minus the same rows with that op off)."""
    from pipelines.photometric.cpu_kernel import kernel_consts, make_scratch, photometric_view
    from pipelines.sampling.param_row import COL

    consts = kernel_consts(spec)
    norm, at = consts.norm, float(consts.solarize_at)
    ops = {"grayscale": (COL.grayscale,), "blur": (COL.blur,), "solarize": (COL.solarize,),
           "colour jitter (4 ops)": (COL.jitter,)}
    everything = tuple(c for cols in ops.values() for c in cols)
    out = []
    for first, k, size in spec.size_runs():
        dst, scratch = np.empty((3, size, size), np.float32), make_scratch(size, consts)

        def timed(variant) -> float:
            table = {id(s): variant(s.rows) for s in samples}

            def run(s: Sample) -> None:
                rows = table[id(s)]
                for v in range(first, first + k):
                    photometric_view(s.crops[v], rows[v], norm, at, dst, scratch)
            return best_ms(run, samples, repeats)

        flat = dst.reshape(-1)

        def floor(s: Sample) -> None:
            for v in range(first, first + k):
                np.copyto(flat, s.crops[v].reshape(-1))  # same elements, contiguous
        drawn = timed(lambda r: r)
        out.append(_row(f"photometric {size} px (as drawn)", size, k, drawn,
                        "one memory pass per view (uint8 -> float32 copy)",
                        best_ms(floor, samples, repeats)))
        out.append(_row(f"  normalise only {size} px", size, k,
                        timed(lambda r: _switched(r, everything))))
        for name, cols in ops.items():
            out.append(_row(f"  {name} {size} px (marginal)", size, k,
                            drawn - timed(lambda r, c=cols: _switched(r, c))))
    return out


def jitter_op_rows(samples: list[Sample], spec, repeats: int) -> list[dict]:
    """Each jitter op as one isolated pass over a view (the kernel's own row helpers), times
    the jittered views of that size per image (as drawn), summed over sizes."""
    from numba import njit

    from pipelines.photometric.cpu_kernel import (_brightness, _contrast, _hue, _luma_sum,
                                                  _saturation)
    from pipelines.sampling.param_row import COL

    @njit(nogil=True)
    def one_pass(op: int, planes: np.ndarray, f: float) -> float:
        size, m = planes.shape[1], 0.0
        if op == 1:  # contrast needs the view's mean luma first: its own sweep
            for y in range(size):
                m += _luma_sum(planes[0, y], planes[1, y], planes[2, y])
            m = m / (size * size)
        for y in range(size):
            r, g, b = planes[0, y], planes[1, y], planes[2, y]
            if op == 0:
                _brightness(r, g, b, np.float32(f))
            elif op == 1:
                _contrast(r, g, b, r, g, b, np.float32(f), np.float32(m))
            elif op == 2:
                _saturation(r, g, b, np.float32(f))
            else:
                _hue(r, g, b, np.float32(f))
        return m

    jittered = np.mean([s.rows[:, COL.jitter] for s in samples], axis=0)  # per view
    out = []
    for op, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        ms = 0.0
        for first, k, size in spec.size_runs():
            planes = np.random.default_rng(0).random((3, size, size), dtype=np.float32)
            one_pass(op, planes, 0.9)  # compile
            best, reps = float("inf"), 20
            for _ in range(repeats):
                t0 = time.thread_time()
                for _ in range(reps):
                    one_pass(op, planes, 0.9)
                best = min(best, (time.thread_time() - t0) / reps)
            ms += 1e3 * best * float(jittered[first:first + k].sum())
        out.append(_row(f"    {name} (isolated pass x jittered views)", "all",
                        round(float(jittered.sum()), 2), ms))
    return out


def collate_rows(spec, repeats: int, batch: int = 64) -> list[dict]:
    """The loader's copy of a batch's finished float32 views out of FFCV's buffer, per image:
    into fresh memory (``plain_copy``, the loader before ``RecycledOutputs``) and refilling
    a dropped batch's tensor (``RecycledOutputs``, the loader now); floor: writing the same
    bytes once into memory already mapped."""
    import torch

    from pipelines.ffcv_backend.outputs import RecycledOutputs, plain_copy

    per_image = sum(3 * v.size * v.size for v in spec.views())
    src = torch.from_numpy(np.random.default_rng(0).random(batch * per_image,
                                                           dtype=np.float32))
    sink = np.empty(batch * per_image, np.float32)
    pool = RecycledOutputs()
    pool.copy(src, torch.float32)  # warm-up: the pool's first tensor (dropped at once)
    best = {"fresh": float("inf"), "recycled": float("inf"), "floor": float("inf")}
    for _ in range(repeats):
        for name, step in (("fresh", lambda: plain_copy(src, torch.float32)),
                           ("recycled", lambda: pool.copy(src, torch.float32)),
                           ("floor", lambda: sink.fill(0.0))):
            t0 = time.thread_time()
            step()  # the result is dropped at once, as a consumer drops a used batch
            best[name] = min(best[name], time.thread_time() - t0)
    ms = {k: 1e3 * v / batch for k, v in best.items()}
    floor = "one write of the same bytes (mapped memory)"
    return [_row("collate+copy, fresh memory (before)", "-", spec.num_views, ms["fresh"],
                 floor, ms["floor"]),
            _row("collate+copy, recycled outputs (the loader)", "-", spec.num_views,
                 ms["recycled"], floor, ms["floor"])]


def op_total_row(samples: list[Sample], spec, repeats: int, floors: float) -> dict:
    """Decode + draw + every view's cut and finish, as the op runs them for one image."""
    from pipelines.ffcv_backend.decode_once import ViewLayout, cut_and_finish, decode_jpeg
    from pipelines.ffcv_backend.resample import filter_code
    from pipelines.photometric.cpu_kernel import kernel_consts, make_scratch
    from pipelines.sampling.compiled_draw import draw_image_rows, spec_arrays

    layout = ViewLayout(tuple(v.size for v in spec.views()), planar=True)
    sizes = np.array(layout.sizes, np.int64)
    offsets = np.array(layout.offsets, np.int64)
    consts, kind, arrays = kernel_consts(spec), filter_code(spec.interpolation), spec_arrays(spec)
    flat = np.empty(layout.row_entries, np.float32)
    crop = np.empty(max(sizes) ** 2 * 3, np.uint8)
    scratch = make_scratch(int(max(sizes)), consts)
    buf = np.empty(max(s.height * s.width * 3 for s in samples), np.uint8)
    rows = np.empty_like(samples[0].rows)

    def whole(s: Sample) -> None:
        draw_image_rows(s.key, np.int64(s.width), np.int64(s.height), arrays.views,
                        arrays.common, rows)
        pixels = buf[:s.height * s.width * 3]
        decode_jpeg(s.data, pixels, s.height, s.width)
        cut_and_finish(pixels.reshape(s.height, s.width, 3), rows, flat, 0, 1, sizes, offsets,
                       kind, crop, scratch, consts.norm, float(consts.solarize_at))
    return _row("op total (decode + draw + cut + finish)", "-", spec.num_views,
                best_ms(whole, samples, repeats), "sum of the floors above but collate", floors)


def measure_stages(root: Path, cfg: StagesBenchConfig, log=print) -> list[dict]:
    """Every row (see the module docstring), on one thread."""
    import torch

    from pipelines import AugmentationSpec

    torch.set_num_threads(1)  # one core: the loader's copy on this thread only (CPU clock)
    spec = AugmentationSpec(local_crops=cfg.local_crops)
    samples = load_samples(root, cfg, spec)
    log(f"{len(samples)} images loaded; timing stages (best of {cfg.repeats})")
    rows = decode_rows(samples, cfg.repeats)
    rows.append(draw_row(samples, spec, cfg.repeats))
    rows += resize_rows(samples, spec, cfg.repeats)
    rows += photometric_rows(samples, spec, cfg.repeats)
    rows += jitter_op_rows(samples, spec, cfg.repeats)
    rows += collate_rows(spec, cfg.repeats)
    floors = sum(r["floor_ms_per_image"] for r in rows
                 if r["floor_ms_per_image"] == r["floor_ms_per_image"]
                 and not r["stage"].startswith("collate"))
    rows.append(op_total_row(samples, spec, cfg.repeats, floors))
    return rows


def run_stages_benchmark(cfg: StagesBenchConfig, machine) -> BenchmarkResult:
    data, rows, load = measure_on_data(cfg.source, lambda root: measure_stages(root, cfg))
    total = next(r for r in rows if r["stage"].startswith("op total"))
    return BenchmarkResult(
        what="stages", title="FFCV CPU executor: ms per image by stage, next to each floor",
        machine=machine, baseline="each stage's floor (the floor column), same run, same core",
        rows=rows, columns=STAGE_COLUMNS,
        config={k: v for k, v in asdict(cfg).items() if k != "source"},
        **data.result_fields(),
        notes=[f"One thread, one image at a time, images in memory, CPU time of the thread: "
               f"the op's own compiled functions. Op total {total['ms_per_image']:.2f} ms/image = "
               f"{1e3 / total['ms_per_image']:.0f} images/s per core before FFCV's reading "
               "and the loader's copy (collate+copy row).",
               "Indented rows are parts of the row above them: normalise only, then each op's "
               "marginal cost under the recipe's rates (drawn rows minus the same rows with "
               "that op off; a small negative figure is noise); the jitter's four ops each "
               "as one isolated pass (the kernel fuses them into its sweeps, so their sum "
               "exceeds the jitter's marginal cost).",
               "Floors: decode = libjpeg-turbo alone (the faster of PIL and OpenCV on the same "
               "bytes); resize = one OpenCV bilinear pass of the same boxes on one thread "
               "(no antialiasing: below what the recipe's filter can reach); photometric = one "
               "memory pass per view; collate = one write of the same bytes.",
               load] + data.notes())
