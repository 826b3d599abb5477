"""The compiled resampling of the FFCV decode-once op.

(Its crop boxes and flips come from ``pipelines.sampling.compiled_draw``, tested bitwise against
the plain sampler in sampling/test_compiled_draw.py.)

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
from pipelines.ffcv_backend.resample import filter_code, resize_crop  # noqa: E402
from tests.pipelines.fidelity import assert_images_close  # noqa: E402
from tests.pipelines.images import photo_crop  # noqa: E402

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
