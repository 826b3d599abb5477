"""pipelines.photometric.cpu_kernel: the fused numba kernel against its twin, the torch tensor ops,
and op by op against the PIL reference.

The twin is ``torch_ops``: ``params.params_from_views`` of the same rows, ``apply_photometric``
with the grouped CPU schedule, then ``PhotometricOps.normalize``. Both compute the same
formulas in float32; they differ only in rounding (the kernel sums blur taps four at a time
without rounding differently, but reduces the contrast mean in another order, and the
compiler may contract a multiply-add where torch does not, or the reverse).

Tolerance against the twin: ``ATOL`` = 2e-5 on the normalised output, i.e. 2e-5 * std
<= 4.5e-6 on the [0, 1] scale, about 1/900 of a uint8 level. Why that bound: a view goes
through at most some 30 rounded float32 operations (four jitter ops, the hue's division,
up to 2 x 13 blur taps, normalisation), each off by at most half an ulp (6e-8 at 1.0), so
about 2e-6 on [0, 1], times 1/std <= 4.45 after normalisation: ~8e-6. Every operation is
continuous in its input (clipping, the hue wheel's wrap-around and solarize at 128, where
x = 0.5 maps to 0.5, included), so rounding differences are never amplified into jumps.
Measured worst over photos and noise images with gray pixels and channel ties, at sizes
224, 96 and 13, random recipes and forced jitter/blur/solarize: 6.4e-6. (A solarize
threshold other than 128 is a jump: a value within rounding of it may flip. The one test
with another threshold therefore uses exact uint8 levels, where nothing is rounded.)

Against the PIL reference the bounds are those measured for the tensor ops in
tests/pipelines/photometric/test_torch_ops.py (the kernel is within ATOL of them), checked with the
shared helpers of tests/pipelines/fidelity.py.
"""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.sampling import param_row
from pipelines.photometric import cpu_kernel as K
from pipelines import reference as ref
from pipelines.photometric import params as P
from pipelines.photometric import torch_ops as T
from pipelines.sampling.param_row import COL
from pipelines.sampling import JitterParams, ViewParams, sample_image_params, sample_rng
from pipelines.spec import AugmentationSpec
from tests.pipelines.fidelity import assert_images_close, to_pixels
from tests.pipelines.images import photo_crop
from tests.pipelines.photometric.test_torch_ops import reference_chain

SPEC = AugmentationSpec()
ATOL = 2e-5
SIZES = (224, 96, 13)
IDENTITY_ORDER = (0, 1, 2, 3)


def images(size: int) -> np.ndarray:
    """uint8 [2, S, S, 3]: a photo crop, and noise with gray rows and channel ties (every
    branch of the hue rotation)."""
    photo = np.asarray(photo_crop((size, size)))
    noise = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    noise[:2] = noise[:2, :, :1]
    noise[2, :, 1] = noise[2, :, 0]
    noise[3, :, 2] = noise[3, :, 1]
    return np.ascontiguousarray(np.stack([photo, noise]))


def kernel(imgs: np.ndarray, rows: np.ndarray, spec: AugmentationSpec = SPEC) -> np.ndarray:
    c = K.kernel_consts(spec)
    out = np.full((len(rows), 3, imgs.shape[1], imgs.shape[2]), np.nan, np.float32)
    K.photometric_batch(imgs, rows, c.norm, c.solarize_at, out)
    return out


def twin(imgs: np.ndarray, rows: np.ndarray, spec: AugmentationSpec = SPEC) -> np.ndarray:
    """torch_ops on the same rows: the obviously-correct, op-at-a-time path."""
    params = P.params_from_views([param_row.from_row(r) for r in rows])
    x = T.to_float(torch.from_numpy(imgs), channels_last=True)
    return T.PhotometricOps(spec).normalize(T.apply_photometric(x, params, spec, "grouped")).numpy()


def assert_matches_twin(imgs: np.ndarray, rows: np.ndarray, spec: AugmentationSpec = SPEC,
                        what: str = "") -> None:
    got, want = kernel(imgs, rows, spec), twin(imgs, rows, spec)
    assert np.isfinite(got).all(), f"{what}: output not fully written"
    err = np.abs(got - want).reshape(len(rows), -1).max(axis=1)
    assert err.max() <= ATOL, (f"{what}: max |kernel - torch_ops| = {err.max():.2e} "
                               f"(row {int(err.argmax())}: {rows[err.argmax()].tolist()})")


def view(size: int, order=None, b=1.0, c=1.0, s=1.0, hue=0.0, gray=False, sigma=None,
         solarize=False) -> ViewParams:
    jitter = JitterParams(order, b, c, s, hue) if order is not None else None
    return ViewParams((0, 0, size, size), False, jitter, gray, sigma, solarize)


def rows_for(imgs: np.ndarray, *views: ViewParams) -> tuple[np.ndarray, np.ndarray]:
    """Every view applied to every image: (images, rows) both of len(views) * len(imgs)."""
    return (np.ascontiguousarray(np.concatenate([imgs] * len(views))),
            param_row.to_rows([v for v in views for _ in imgs]))


# ------------------------------------------------------------------------------ vs torch_ops
j = SPEC.jitter
ALONE = {
    "all off": dict(),
    "brightness 0": dict(order=IDENTITY_ORDER, b=0.0),
    "brightness max": dict(order=IDENTITY_ORDER, b=1 + j.brightness),
    "contrast 0": dict(order=IDENTITY_ORDER, c=0.0),
    "contrast max": dict(order=IDENTITY_ORDER, c=1 + j.contrast),
    "saturation 0": dict(order=IDENTITY_ORDER, s=0.0),
    "saturation max": dict(order=IDENTITY_ORDER, s=1 + j.saturation),
    "hue 0": dict(order=IDENTITY_ORDER),
    "hue +0.1": dict(order=IDENTITY_ORDER, hue=0.1),
    "hue -0.37": dict(order=IDENTITY_ORDER, hue=-0.37),
    "hue +0.5": dict(order=IDENTITY_ORDER, hue=0.5),
    "hue -0.5": dict(order=IDENTITY_ORDER, hue=-0.5),
    "grayscale": dict(gray=True),
    "blur 0.1": dict(sigma=0.1),
    "blur 2.0": dict(sigma=2.0),
    "solarize": dict(solarize=True),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", list(ALONE))
def test_each_op_alone_matches_tensor_ops(case, size):
    imgs, rows = rows_for(images(size), view(size, **ALONE[case]))
    assert_matches_twin(imgs, rows, what=f"{case} at {size}")


@pytest.mark.parametrize("size", [96, 13])
def test_all_24_jitter_orders_match_tensor_ops(size):
    orders = list(itertools.permutations(range(4)))
    imgs, rows = rows_for(images(size), *[view(size, o, 1.3, 0.7, 1.2, 0.08) for o in orders])
    assert len({tuple(r) for r in rows[:, param_row.ORDER]}) == 24
    assert_matches_twin(imgs, rows, what=f"24 orders at {size}")


@pytest.mark.parametrize("size", SIZES)
def test_blur_solarize_grayscale_combinations_match_tensor_ops(size):
    views = [view(size, (3, 1, 0, 2), 0.8, 1.3, 0.9, -0.05, gray=g, sigma=s, solarize=z)
             for g in (False, True) for s in (None, 0.1, 0.7, 2.0) for z in (False, True)]
    imgs, rows = rows_for(images(size), *views)
    assert_matches_twin(imgs, rows, what=f"combinations at {size}")


def recipe_rows(n_images: int, seed: int) -> list[np.ndarray]:
    """Rows of whole recipes as sampled for training: per view index, [n_images, WIDTH]."""
    per_image = [sample_image_params(SPEC, 500, 375, sample_rng(seed, 0, 0, i))
                 for i in range(n_images)]
    return [param_row.to_rows([p[v] for p in per_image]) for v in range(SPEC.num_views)]


def test_random_recipes_match_tensor_ops():
    by_view = recipe_rows(6, seed=11)
    for v, spec_view in enumerate(SPEC.views()):
        for size in {spec_view.size, 17}:
            imgs = np.ascontiguousarray(np.repeat(images(size), 3, axis=0))
            assert_matches_twin(imgs, by_view[v], what=f"recipe view {v} at {size}")
    flags = np.concatenate(by_view)
    assert {0, 1} <= set(flags[:, COL.jitter]) and {0, 1} <= set(flags[:, COL.blur])


def test_spec_values_reach_the_kernel():
    """Another mean/std (random recipes) and another solarize threshold (on exact levels)."""
    spec = SPEC.with_overrides(mean=(0.5, 0.25, 0.0), std=(0.5, 0.125, 2.0),
                               solarize_threshold=200)
    imgs = np.ascontiguousarray(np.repeat(images(96), 3, axis=0))
    rows = recipe_rows(6, seed=3)[-1]
    rows[:, COL.solarize] = 0.0  # solarize at 200 only where nothing was rounded before
    assert_matches_twin(imgs, rows, spec, "custom mean/std")
    imgs, rows = rows_for(images(96), view(96, solarize=True))
    assert_matches_twin(imgs, rows, spec, "threshold 200")
    assert not np.allclose(kernel(imgs, rows, spec), kernel(imgs, rows))


# ------------------------------------------------------------------------------ vs PIL
PHOTO = images(48)[0]


def kernel_pixels(**kwargs) -> np.ndarray:
    """The kernel on the photo with one view's parameters, back in levels [H, W, 3]."""
    imgs, rows = rows_for(PHOTO[None], view(48, **kwargs))
    return to_pixels(torch.from_numpy(kernel(imgs, rows)[0]), SPEC.mean, SPEC.std)


def pil(op, *args) -> np.ndarray:
    return np.asarray(op(Image.fromarray(PHOTO), *args), dtype=np.float64)


@pytest.mark.parametrize("factor", [0.6, 1.4])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_blend_ops_match_reference(name, factor):
    got = kernel_pixels(order=IDENTITY_ORDER, **{name[0]: factor})
    want = pil(getattr(ref, f"adjust_{name}"), factor)
    assert_images_close(got, want, mean_tol=0.7, p99_tol=1.2, max_tol=1.5, what=name)


@pytest.mark.parametrize("shift", [0.1, -0.5])
def test_hue_matches_reference(shift):
    got = kernel_pixels(order=IDENTITY_ORDER, hue=shift)
    assert_images_close(got, pil(ref.adjust_hue, shift), mean_tol=1.5, p99_tol=10,
                        what=f"hue {shift}")


def test_grayscale_matches_reference():
    got = kernel_pixels(gray=True)
    assert_images_close(got, pil(ref.to_grayscale), 0.5, 1, 1, "grayscale")
    assert np.ptp(got, axis=2).max() < 1e-3


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_matches_reference_away_from_borders(sigma):
    got, want = kernel_pixels(sigma=sigma), pil(ref.gaussian_blur, sigma)
    assert_images_close(got[6:-6, 6:-6], want[6:-6, 6:-6], mean_tol=1.0, p99_tol=3,
                        max_tol=5, what=f"blur {sigma}")


def test_solarize_and_normalise_match_reference():
    np.testing.assert_allclose(kernel_pixels(solarize=True),
                               pil(ref.solarize, SPEC.solarize_threshold), atol=1e-3)
    imgs, rows = rows_for(PHOTO[None], view(48))
    want = ref.to_normalized_tensor(Image.fromarray(PHOTO), SPEC.mean, SPEC.std).numpy()
    np.testing.assert_allclose(kernel(imgs, rows)[0], want, atol=1e-5, rtol=0)


def test_full_views_match_reference():
    for p in (view(48, (3, 0, 2, 1), 1.3, 0.7, 1.2, 0.08, sigma=1.0, solarize=True),
              view(48, (1, 2, 0, 3), 1.3, 0.7, 1.2, 0.08, gray=True, sigma=0.6)):
        imgs, rows = rows_for(PHOTO[None], p)
        got = to_pixels(torch.from_numpy(kernel(imgs, rows)[0]), SPEC.mean, SPEC.std)
        assert_images_close(got, reference_chain(PHOTO, p), mean_tol=3.0, p99_tol=40,
                            what="full view")


# ------------------------------------------------------------------------------ entry points
def test_view_and_batch_agree_and_ignore_geometry():
    imgs = np.ascontiguousarray(np.repeat(images(40), 4, axis=0))
    rows = recipe_rows(8, seed=5)[-1]
    c = K.kernel_consts(SPEC)
    batch = kernel(imgs, rows)
    scratch = K.make_scratch(40, c)  # one scratch, reused for every view
    moved = rows.copy()
    moved[:, COL.top:COL.flip + 1] = (3.0, 5.0, 7.0, 9.0, 1.0)
    for img, row, want in zip(imgs, moved, batch):
        out = np.empty((3, 40, 40), np.float32)
        K.photometric_view(img, row, c.norm, c.solarize_at, out, scratch)
        np.testing.assert_array_equal(out, want)


def test_input_is_not_modified():
    imgs = images(24)
    before = imgs.copy()
    kernel(imgs, rows_for(imgs, view(24, (0, 1, 2, 3), 1.2, 0.8, 1.1, 0.1, sigma=1.0))[1][:2])
    np.testing.assert_array_equal(imgs, before)


def test_bad_scratch_and_bad_rows_raise():
    c = K.kernel_consts(SPEC)
    img, out = images(16)[0], np.empty((3, 16, 16), np.float32)
    row = param_row.to_row(view(16, sigma=2.0))
    with pytest.raises(ValueError, match="scratch too small"):
        K.photometric_view(img, row, c.norm, c.solarize_at, out,
                           np.empty(K.scratch_size(16, 1), np.float32))
    bad = param_row.to_row(view(16, (0, 1, 2, 3)))
    bad[param_row.ORDER] = (0, 1, 1, 3)
    with pytest.raises(ValueError, match="permutation"):
        K.photometric_view(img, bad, c.norm, c.solarize_at, out, K.make_scratch(16, c))
    with pytest.raises(ValueError, match=r"\[S, S, 3\]"):
        K.photometric_view(np.ascontiguousarray(img[:, :15]), row, c.norm, c.solarize_at, out,
                           K.make_scratch(16, c))
