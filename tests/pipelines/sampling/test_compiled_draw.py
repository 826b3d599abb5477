"""pipelines.sampling.compiled_draw: the compiled draw is the plain sampler, bit for bit.

The twin: for a stream key and an image size, ``draw_image_rows`` must write exactly
``param_row.to_rows(sample_image_params(spec, w, h, CounterRNG(key)))`` (compared as raw
64-bit patterns) and consume exactly the counters the plain draw consumed, over hundreds of
keys and sizes, tiny and extreme-aspect images (the centred fallback crop), and specs with
other view counts and probabilities 0 and 1. Box and flip statistics are checked with the
shared fidelity helpers.
"""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba (the dali / ffcv extras) is not installed")

from pipelines.sampling import compiled_draw as C  # noqa: E402
from pipelines.sampling.counter_stream import (CounterRNG, epoch_key, sample_key, splitmix64,  # noqa: E402
                                      unit)
from pipelines.sampling.param_row import COL, WIDTH, to_rows  # noqa: E402
from pipelines.sampling import sample_crop_box, sample_image_params  # noqa: E402
from pipelines.spec import AugmentationSpec, ColorJitterSpec, ViewSpec  # noqa: E402
from tests.pipelines.fidelity import assert_crop_boxes, check_rate  # noqa: E402

DEFAULT = AugmentationSpec()
ALWAYS = AugmentationSpec(
    global_views=(ViewSpec(32, (0.4, 1.0), 1.0, 1.0),),
    local_view=ViewSpec(16, (0.05, 0.4), 1.0, 1.0), local_crops=3, flip_p=1.0,
    jitter=ColorJitterSpec(p=1.0, brightness=1.5, contrast=0.0, saturation=2.0, hue=0.5),
    grayscale_p=1.0, blur_sigma=(1, 3))
NEVER = AugmentationSpec(
    global_views=(ViewSpec(32, (1, 1), 0.0, 0.0), ViewSpec(32, (0.3, 0.9), 0.0, 0.0)),
    local_view=ViewSpec(16, (0.05, 0.4), 0.0, 0.0), local_crops=0, flip_p=0.0,
    jitter=ColorJitterSpec(p=0.0), grayscale_p=0.0, ratio=(1.0, 1.0))
SPECS = {"default": DEFAULT, "always": ALWAYS, "never": NEVER,
         "locals5": DEFAULT.with_overrides(local_crops=5, ratio=(0.5, 2.0), jitter=ColorJitterSpec(
             p=0.5, hue=0.0), blur_sigma=(0.5, 0.5))}
EXTREMES = [(1, 1), (1, 500), (500, 1), (200, 10), (7, 90), (2, 3), (64, 48), (4000, 3000)]


def plain(spec, width, height, key):
    """(rows, counters consumed) of the plain sampler."""
    rng = CounterRNG(key)
    return to_rows(sample_image_params(spec, width, height, rng)), rng.counter


def compiled(spec, width, height, key):
    arrays = C.spec_arrays(spec)
    out = np.full((spec.num_views, WIDTH), np.nan)
    used = C.draw_image_rows(np.uint64(key), width, height, arrays.views, arrays.common, out)
    return out, used


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def cases(seed: int, n: int) -> list[tuple[int, int, int]]:
    """(key, width, height): n random sizes, then every extreme size with 20 keys."""
    rng = np.random.default_rng(seed)
    sizes = [tuple(int(v) for v in rng.integers(1, 1200, 2)) for _ in range(n)]
    sizes += [s for s in EXTREMES for _ in range(20)]
    return [(sample_key(seed, 0, 3, i), w, h) for i, (w, h) in enumerate(sizes)]


def test_compiled_stream_primitives_equal_plain_python():
    rng = np.random.default_rng(0)
    for x in [0, 1, (1 << 64) - 1, *rng.integers(0, 2 ** 63, 50).tolist()]:
        assert int(C.splitmix64_nb(np.uint64(x))) == splitmix64(x)
    key = sample_key(3, 1, 2, 99)
    assert [C.unit_nb(np.uint64(key), k) for k in range(500)] == [unit(key, k)
                                                                   for k in range(500)]
    ek = epoch_key(5, 2, 7)
    indices = np.array([0, 1, 11, 2 ** 40, 2 ** 62], dtype=np.int64)
    want = [sample_key(5, 2, 7, int(i)) for i in indices]
    assert [int(k) for k in C.batch_keys(np.uint64(ek), indices)] == want
    assert int(C.sample_key_nb(np.uint64(ek), 11)) == want[2]


@pytest.mark.parametrize("name", list(SPECS))
def test_compiled_rows_are_the_plain_sampler_bitwise(name):
    spec = SPECS[name]
    fallbacks = 0
    for key, w, h in cases(seed=len(name), n=250):
        want, want_used = plain(spec, w, h, key)
        got, used = compiled(spec, w, h, key)
        assert np.array_equal(bits(got), bits(want)), (name, key, w, h, got - want)
        assert used == want_used, (name, key, w, h)
        box_rng = CounterRNG(key)
        sample_crop_box(w, h, spec.global_views[0].scale, spec.ratio, box_rng)
        fallbacks += box_rng.counter == 20  # ten failed tries, centred box
    assert fallbacks >= 40, f"{name}: the fallback crop was hit {fallbacks} times only"


def test_every_column_varies_where_the_spec_lets_it():
    """Guards the twin test against a sampler that writes constants: over the default
    spec, every column takes several values (and both values for the 0 / 1 flags)."""
    rows = np.concatenate([compiled(DEFAULT, w, h, key)[0] for key, w, h in cases(9, 150)])
    for name in ("top", "left", "height", "width", "brightness", "hue", "sigma"):
        assert len(np.unique(rows[:, getattr(COL, name)])) > 20, name
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        assert set(np.unique(rows[:, getattr(COL, name)])) == {0.0, 1.0}, name


def test_batch_rows_are_the_per_image_rows():
    spec = SPECS["locals5"]
    arrays = C.spec_arrays(spec)
    triples = cases(4, 60)
    keys = np.array([k for k, _, _ in triples], dtype=np.uint64)
    widths = np.array([w for _, w, _ in triples], dtype=np.int64)
    heights = np.array([h for _, _, h in triples], dtype=np.int64)
    batch = C.draw_batch_rows(keys, widths, heights, arrays.views, arrays.common)
    assert batch.shape == (len(triples), spec.num_views, WIDTH) and batch.dtype == np.float64
    for row, (key, w, h) in zip(batch, triples):
        assert np.array_equal(bits(row), bits(plain(spec, w, h, key)[0]))
    empty = C.draw_batch_rows(keys[:0], widths[:0], heights[:0], arrays.views, arrays.common)
    assert empty.shape == (0, spec.num_views, WIDTH)


def test_a_changed_spec_number_reaches_the_rows():
    """spec_arrays carries every number: nudge each one and the rows change."""
    key, w, h = sample_key(0, 0, 0, 1), 300, 200
    base = compiled(DEFAULT, w, h, key)[0]
    j = DEFAULT.jitter
    nudged = [DEFAULT.with_overrides(ratio=(0.7, 1.3)),
              DEFAULT.with_overrides(blur_sigma=(0.2, 2.0)),
              DEFAULT.with_overrides(jitter=dataclasses.replace(j, brightness=0.3)),
              DEFAULT.with_overrides(jitter=dataclasses.replace(j, contrast=0.3)),
              DEFAULT.with_overrides(jitter=dataclasses.replace(j, saturation=0.3)),
              DEFAULT.with_overrides(jitter=dataclasses.replace(j, hue=0.2)),
              DEFAULT.with_overrides(local_view=dataclasses.replace(DEFAULT.local_view,
                                                                    scale=(0.1, 0.4)))]
    for spec in nudged:
        got = compiled(spec, w, h, key)[0]
        assert not np.array_equal(got, base), spec
        assert np.array_equal(bits(got), bits(plain(spec, w, h, key)[0]))


@pytest.mark.parametrize("view", [0, 2])
def test_compiled_boxes_and_flips_follow_the_spec(view):
    width, height, n = 120, 90, 3000
    arrays = C.spec_arrays(DEFAULT)
    keys = C.batch_keys(np.uint64(epoch_key(0, 0, 0)), np.arange(n, dtype=np.int64))
    rows = C.draw_batch_rows(keys, np.full(n, width), np.full(n, height), arrays.views,
                             arrays.common)[:, view]
    boxes = rows[:, COL.top:COL.width + 1].astype(np.int64)
    v = DEFAULT.views()[view]
    assert_crop_boxes(boxes, width, height, v.scale, DEFAULT.ratio, f"view {view}")
    assert check_rate(rows[:, COL.flip] == 1, DEFAULT.flip_p, "flip").ok
    assert check_rate(rows[:, COL.jitter] == 1, DEFAULT.jitter.p, "jitter").ok
    assert check_rate(rows[:, COL.blur] == 1, v.blur_p, "blur").ok


FAST_CALLER = """
import numpy as np
from numba import njit
from pipelines.sampling import compiled_draw as C
from pipelines.sampling.counter_stream import CounterRNG, sample_key
from pipelines.sampling.param_row import to_rows
from pipelines.sampling import sample_image_params
from pipelines.spec import AugmentationSpec
spec = AugmentationSpec()
views, common = C.spec_arrays(spec)

@njit(fastmath=True, error_model="numpy")  # as FFCV's Compiler compiles an op
def op(key, w, h, out):
    return C.draw_image_rows(key, w, h, views, common, out)

bad = 0
for i in range(100):
    key = sample_key(3, 1, 0, i)
    want = to_rows(sample_image_params(spec, 48, 61, CounterRNG(key)))
    for draw in (op, lambda *a: C.draw_image_rows(*a[:3], views, common, a[3])):
        out = np.empty_like(want)
        draw(np.uint64(key), 48, 61, out)
        bad += not np.array_equal(out.view(np.uint64), want.view(np.uint64))
print(bad)
"""


def test_a_fastmath_caller_compiling_first_does_not_change_the_draw(tmp_path):
    """numba hands a caller's fastmath to callees that leave it unset and caches that
    variant (see compiled_draw.EXACT). In a fresh process with an empty cache, let a
    fastmath op (as FFCV compiles) compile the draw first: its rows and the rows of every
    later plain call must still be the reference's bit for bit."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", FAST_CALLER], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"
