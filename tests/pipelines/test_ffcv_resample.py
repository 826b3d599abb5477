"""The fast compiled crop + resize + flip against its plain twin, bit for bit.

``resize_crop`` (transposes, one vectorised row-filter kernel, zero-padded tap tables, flip
folded into the weights) must equal ``resize_crop_simple`` (the first implementation,
checked against PIL in test_ffcv_crops.py) exactly: the same uint8 in every pixel, for all
three filters, both flips, up- and down-sampling, both pass orders, 1-pixel crops and
outputs, crop == image, tap tables of one and of many groups of four, and images with hard
edges where bicubic overshoot gets clipped. Needs numba only (not FFCV).
"""
import numpy as np
import pytest

pytest.importorskip("numba", reason="numba (an ffcv dependency) is not installed")

from numba import njit  # noqa: E402

from pipelines.ffcv_backend import resample as rs  # noqa: E402
from pipelines.spec import INTERPOLATIONS  # noqa: E402
from tests.pipelines.images import photo_crop  # noqa: E402

KINDS = [rs.filter_code(name) for name in INTERPOLATIONS]


def both(image, box, out_shape, kind, flip):
    """(fast, simple) outputs of one crop; out_shape (h, w)."""
    fast = np.full((*out_shape, 3), 7, np.uint8)
    simple = np.full((*out_shape, 3), 9, np.uint8)
    rs.resize_crop(image, *box, flip, fast, kind)
    rs.resize_crop_simple(image, *box, flip, simple, kind)
    return fast, simple


def assert_same(image, box, out_shape, kind, flip):
    fast, simple = both(image, box, out_shape, kind, flip)
    if not np.array_equal(fast, simple):
        diff = np.abs(fast.astype(int) - simple)
        raise AssertionError(f"{INTERPOLATIONS[kind]} box {box} -> {out_shape} flip {flip} "
                             f"on {image.shape}: {int((diff > 0).sum())} values differ, "
                             f"max {int(diff.max())}")


def sample_images(rng):
    """A photo, uniform noise, and a 0/255 pattern (maximal bicubic overshoot)."""
    photo = np.asarray(photo_crop((150, 110)))
    noise = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    edges = np.where(rng.random((60, 45, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, 2)
    return [photo, noise, np.ascontiguousarray(edges)]


@pytest.mark.parametrize("kind", KINDS, ids=INTERPOLATIONS)
def test_fast_equals_simple_on_random_crops(kind):
    rng = np.random.default_rng(100 + kind)
    images = sample_images(rng)
    for case in range(150):
        image = images[case % len(images)]
        height, width = image.shape[:2]
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        # outputs from 1 px to ~2.5x the crop: up, down, and mixed (one axis each way)
        out_h = int(rng.integers(1, min(2.5 * h, 160) + 2))
        out_w = out_h if case % 2 else int(rng.integers(1, min(2.5 * w, 160) + 2))
        assert_same(image, (top, left, h, w), (out_h, out_w), kind, bool(case % 3 == 0))


EDGE_CASES = [
    ((0, 0, 1, 1), (1, 1)),        # one pixel to one pixel
    ((4, 7, 1, 1), (9, 5)),        # one pixel to many
    ((3, 2, 1, 17), (6, 6)),       # one row
    ((3, 2, 23, 1), (8, 3)),       # one column
    ((0, 0, 60, 45), (60, 45)),    # crop == image, same size
    ((0, 0, 60, 45), (224, 96)),   # whole image, upsampled
    ((0, 0, 60, 45), (1, 1)),      # whole image to one pixel (every tap in one group chain)
    ((0, 0, 60, 45), (7, 3)),      # strong downsampling: many groups of four taps
    ((5, 5, 40, 30), (11, 200)),   # down on one axis, up on the other
    ((1, 1, 3, 3), (96, 96)),      # tiny crop: padded taps point past the source
]


@pytest.mark.parametrize("box,out_shape", EDGE_CASES)
@pytest.mark.parametrize("kind", KINDS, ids=INTERPOLATIONS)
def test_fast_equals_simple_on_edge_cases(box, out_shape, kind):
    rng = np.random.default_rng(7)
    for image in sample_images(rng)[1:]:  # noise 97x131, edges 60x45: every box fits
        for flip in (False, True):
            assert_same(image, box, out_shape, kind, flip)


def test_flip_is_the_exact_mirror():
    image = np.asarray(photo_crop((90, 70)))
    for kind in KINDS:
        plain, _ = both(image, (3, 5, 60, 50), (40, 33), kind, False)
        mirrored, _ = both(image, (3, 5, 60, 50), (40, 33), kind, True)
        assert np.array_equal(mirrored, plain[:, ::-1])


@pytest.mark.parametrize("kind", KINDS, ids=INTERPOLATIONS)
def test_padded_taps_are_the_twin_weights_zero_extended(kind):
    """``padded_taps`` computes the weights itself: same float32 bits as ``filter_weights``,
    zero-padded to the smallest multiple of TAP_GROUP, rows reversed for a flip."""
    sizes = [(i, o) for i in (1, 2, 3, 5, 45, 60, 97, 140, 180, 500)
             for o in (1, 2, 7, 96, 224)]
    for in_size, out_size in sizes:
        start, count, weights = rs.filter_weights(in_size, out_size, kind)
        taps = -(-int(count.max()) // rs.TAP_GROUP) * rs.TAP_GROUP
        for flip in (False, True):
            pstart, padded = rs.padded_taps(in_size, out_size, kind, flip)
            order = np.arange(out_size)[::-1] if flip else np.arange(out_size)
            assert padded.shape == (out_size, taps), (in_size, out_size)
            assert np.array_equal(pstart, start[order])
            for i, j in enumerate(order):
                n = count[j]
                assert np.array_equal(padded[i, :n].view(np.uint32),
                                      weights[j, :n].view(np.uint32)), (in_size, out_size, i)
                assert not padded[i, n:].any()


@njit
def _round_both(values):
    out = np.empty((values.shape[0], 2), np.int64)
    for i in range(values.shape[0]):
        out[i, 0] = rs._round_u8(values[i])
        out[i, 1] = rs._to_u8(values[i])
    return out


def test_fast_rounding_is_the_twin_rounding():
    """Half-way points and their float32 neighbours, the value whose float32 ``v + 0.5``
    rounds up (0.49999997), the clip bounds, and random sums."""
    halves = np.arange(-3, 260, dtype=np.float32) + np.float32(0.5)
    near = np.concatenate([np.nextafter(halves, np.float32(-1e9)), halves,
                           np.nextafter(halves, np.float32(1e9))])
    special = np.array([0.49999997, -0.5, -0.50000006, -1e6, 254.5, 254.49998, 255.0,
                        255.49998, 1e6, 0.0, -0.0], np.float32)
    random = np.random.default_rng(0).uniform(-40, 300, 20000).astype(np.float32)
    got = _round_both(np.concatenate([near, special, random]).astype(np.float32))
    assert np.array_equal(got[:, 0], got[:, 1])
    assert rs._round_u8(np.float32(0.49999997)) == 0
