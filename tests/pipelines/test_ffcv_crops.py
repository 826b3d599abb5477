"""The compiled pieces of the FFCV decode-once op: counter randomness, crop boxes, resampling.

- The counter stream and the crop boxes are exact twins of plain Python: the compiled
  ``crop_box`` must give the boxes ``pipelines.sampling.sample_crop_box`` gives when fed the
  same stream, including the centred fallback.
- Box statistics over a few thousand samples match the spec's sampler (fidelity helpers).
- Resampling against the reference's PIL crop + resize (tolerances in pixel levels): for
  bicubic and bilinear mean <= 0.3, max <= 4 (PIL uses fixed-point weights and, for some
  shapes, runs its two passes in the other order, which moves overshoot clipping); the
  flip is exact; nearest picks the same source pixel for >= 95% of output pixels (PIL's
  float rounding of pixel centres that fall on a boundary differs).
"""
import numpy as np
import pytest

pytestmark = pytest.mark.ffcv
pytest.importorskip("numba", reason="numba (an ffcv dependency) is not installed")

from PIL import Image  # noqa: E402

from pipelines import reference as ref  # noqa: E402
from pipelines.ffcv_backend import crop_random as cr  # noqa: E402
from pipelines.ffcv_backend.resample import filter_code, resize_crop  # noqa: E402
from pipelines.sampling import sample_crop_box  # noqa: E402
from pipelines.spec import AugmentationSpec  # noqa: E402
from tests.pipelines.fidelity import (assert_crop_boxes, assert_images_close,  # noqa: E402
                                      check_rate)
from tests.pipelines.images import photo_crop  # noqa: E402

SPEC = AugmentationSpec()


def test_compiled_splitmix_and_uniforms_equal_plain_python():
    rng = np.random.default_rng(0)
    for x in [0, 1, cr.MASK64, *rng.integers(0, 2**63, 50).tolist()]:
        assert int(cr.splitmix64_nb(np.uint64(x))) == cr.splitmix64(x)
    key = cr.sample_key(3, 1, 2, 99)
    u = [cr.unit(key, k) for k in range(2000)]
    assert u == [cr.unit_nb(np.uint64(key), k) for k in range(2000)]
    assert 0.0 <= min(u) and max(u) < 1.0 and abs(np.mean(u) - 0.5) < 0.02


def test_keys_differ_per_seed_rank_epoch_and_sample():
    base = (0, 0, 0, 0)
    keys = {cr.sample_key(*base)}
    for i in range(4):
        changed = list(base)
        changed[i] = 1
        keys.add(cr.sample_key(*changed))
    assert len(keys) == 5
    assert cr.sample_key(5, 2, 7, 11) == cr.splitmix64(cr.epoch_key(5, 2, 7) ^ 11)


@pytest.mark.parametrize("width,height", [(64, 48), (500, 375), (200, 10), (7, 90), (1, 1)])
@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.05, 0.4)])
def test_compiled_crop_box_is_the_spec_sampler(width, height, scale):
    """Same stream, same algorithm: identical boxes (the extreme shapes hit the fallback)."""
    for index in range(200):
        key = cr.sample_key(1, 0, 0, index)
        for base in (0, cr.VIEW_STRIDE * 5):
            want = sample_crop_box(width, height, scale, SPEC.ratio, cr.CounterRNG(key, base))
            got = cr.crop_box(width, height, scale[0], scale[1], SPEC.ratio[0], SPEC.ratio[1],
                              np.uint64(key), base)
            assert tuple(got) == want, (width, height, scale, index, base)


@pytest.mark.parametrize("view", [0, 2])
def test_compiled_boxes_and_flips_follow_the_spec(view):
    width, height, n = 120, 90, 3000
    v = SPEC.views()[view]
    boxes, flips = [], []
    for index in range(n):
        key = np.uint64(cr.sample_key(0, 0, 0, index))
        base = view * cr.VIEW_STRIDE
        boxes.append(cr.crop_box(width, height, v.scale[0], v.scale[1], SPEC.ratio[0],
                                 SPEC.ratio[1], key, base))
        flips.append(cr.unit_nb(key, base + cr.FLIP_SLOT) < SPEC.flip_p)
    assert_crop_boxes(np.array(boxes), width, height, v.scale, SPEC.ratio, f"view {view}")
    assert check_rate(flips, SPEC.flip_p, "flip").ok


def test_view_boxes_twin_uses_one_block_per_view():
    boxes = cr.view_boxes(SPEC, 100, 80, cr.sample_key(0, 0, 0, 5))
    assert len(boxes) == SPEC.num_views
    assert len({b for b, _ in boxes}) == SPEC.num_views  # independent draws per view


# ------------------------------------------------------------------------------ resampling
PHOTO = np.asarray(photo_crop((90, 70)))
CASES = [((3, 5, 60, 50), 32), ((0, 0, 70, 90), 24), ((10, 20, 12, 9), 32), ((1, 2, 40, 30), 40)]


def compiled_crop(box, size, interpolation, flip=False, image=PHOTO):
    out = np.zeros((size, size, 3), np.uint8)
    resize_crop(image, *box, flip, out, filter_code(interpolation))
    return out


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("box,size", CASES)
def test_resize_matches_reference_resize(box, size, interpolation):
    got = compiled_crop(box, size, interpolation).astype(np.float64)
    want = np.asarray(ref.resized_crop(Image.fromarray(PHOTO), box, size, interpolation),
                      np.float64)
    assert_images_close(got, want, mean_tol=0.3, p99_tol=2, max_tol=4,
                        what=f"{interpolation} {box} -> {size}")


@pytest.mark.parametrize("box,size", CASES)
def test_nearest_picks_the_reference_pixels(box, size):
    got = compiled_crop(box, size, "nearest")
    want = np.asarray(ref.resized_crop(Image.fromarray(PHOTO), box, size, "nearest"))
    assert (got == want).all(axis=2).mean() >= 0.95


def test_flip_is_the_exact_mirror_and_one_pixel_sources_work():
    box, size = CASES[0]
    assert np.array_equal(compiled_crop(box, size, "bicubic", flip=True),
                          compiled_crop(box, size, "bicubic")[:, ::-1])
    dot = np.array([[[10, 200, 30]]], np.uint8)
    assert (compiled_crop((0, 0, 1, 1), 8, "bicubic", image=dot) == dot[0, 0]).all()


def test_filter_names_come_from_the_spec():
    with pytest.raises(ValueError, match="interpolation"):
        filter_code("lanczos")
