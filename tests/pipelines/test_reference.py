"""The reference (PIL) executor: shapes, ranges, every op against a numpy twin, and rates."""
import colorsys
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import reference as ref
from pipelines.sampling import JitterParams, ViewParams, sample_rng
from pipelines.spec import AugmentationSpec
from tests.pipelines.fidelity import (assert_images_close, assert_view_rates,
                                      high_frequency_energy, is_gray, to_pixels)
from tests.pipelines.images import photo_crop

SPEC = AugmentationSpec()
IMG = photo_crop((48, 48))  # a real colour photo crop (astronaut)
PIX = np.asarray(IMG, dtype=np.float64)


def plain(size: int = 48) -> ViewParams:
    """No op at all: the whole image, no flip, no jitter, gray, blur or solarize."""
    return ViewParams((0, 0, size, size), False, None, False, None, False)


def view_pixels(params: ViewParams, spec: AugmentationSpec = SPEC, size: int = 48,
                img: Image.Image = IMG) -> np.ndarray:
    view = dataclasses.replace(spec.global_views[0], size=size)
    return to_pixels(ref.apply_view(img, params, view, spec), spec.mean, spec.std)


def luma(p: np.ndarray) -> np.ndarray:
    return p[..., 0] * 0.299 + p[..., 1] * 0.587 + p[..., 2] * 0.114


def tiny_spec(**changes) -> AugmentationSpec:
    return SPEC.with_overrides(
        global_views=tuple(dataclasses.replace(v, size=16) for v in SPEC.global_views),
        local_view=dataclasses.replace(SPEC.local_view, size=8), **changes)


# ------------------------------------------------------------------------------ shapes, ranges
def test_default_spec_shapes_and_range():
    views = ref.ReferenceMultiCrop(SPEC)(photo_crop((120, 90)), sample_rng(0, 0, 0, 0))
    assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 10
    lo = (0 - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    hi = (1 - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    for v in views:
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        mins, maxs = v.amin(dim=(1, 2)), v.amax(dim=(1, 2))
        assert (mins >= lo - 1e-5).all() and (maxs <= hi + 1e-5).all()


def test_same_generator_state_same_views():
    mc = ref.ReferenceMultiCrop(tiny_spec())
    a, b = mc(IMG, sample_rng(0, 0, 0, 3)), mc(IMG, sample_rng(0, 0, 0, 3))
    c = mc(IMG, sample_rng(0, 0, 0, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_non_rgb_input_is_converted():
    views = ref.ReferenceMultiCrop(tiny_spec())(IMG.convert("L"), sample_rng(0, 0, 0, 0))
    assert all(v.shape[0] == 3 for v in views)


# ------------------------------------------------------------------------------ geometry
def test_no_op_view_is_exact_normalisation():
    out = ref.apply_view(IMG, plain(), dataclasses.replace(SPEC.global_views[0], size=48), SPEC)
    twin = (PIX / 255.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), twin, atol=1e-5)


def test_crop_then_resize_nearest_matches_numpy():
    spec = SPEC.with_overrides(interpolation="nearest")
    box = (5, 9, 12, 12)  # top, left, h, w
    got = view_pixels(dataclasses.replace(plain(), box=box), spec, size=36)
    crop = PIX[5:17, 9:21]
    np.testing.assert_allclose(got, crop.repeat(3, axis=0).repeat(3, axis=1), atol=1e-3)


def test_interpolation_comes_from_the_spec():
    params = dataclasses.replace(plain(), box=(4, 4, 20, 20))
    bicubic = view_pixels(params, SPEC, size=40)
    bilinear = view_pixels(params, SPEC.with_overrides(interpolation="bilinear"), size=40)
    assert np.abs(bicubic - bilinear).mean() > 0.1
    assert_images_close(bicubic, bilinear, mean_tol=3.0, p99_tol=20.0)  # same crop, though


def test_flip_is_the_mirror_image():
    params = dataclasses.replace(plain(), box=(3, 7, 30, 30))
    np.testing.assert_array_equal(view_pixels(dataclasses.replace(params, flip=True), size=30),
                                  view_pixels(params, size=30)[:, ::-1])


# ------------------------------------------------------------------------------ colour
def test_jitter_factor_one_and_hue_zero_are_identity():
    identity = JitterParams((0, 1, 2, 3), 1.0, 1.0, 1.0, 0.0)
    np.testing.assert_array_equal(view_pixels(dataclasses.replace(plain(), jitter=identity)),
                                  view_pixels(plain()))
    np.testing.assert_array_equal(np.asarray(ref.adjust_hue(IMG, 0.0)), PIX)


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.4])
def test_brightness_scales_pixels(factor):
    twin = np.clip(PIX * factor, 0, 255)
    assert_images_close(np.asarray(ref.adjust_brightness(IMG, factor)), twin, 0.6, 1.0, 1.0)


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.4])
def test_contrast_blends_toward_the_gray_mean(factor):
    mean = np.round(luma(PIX).mean())
    twin = np.clip(mean + factor * (PIX - mean), 0, 255)
    assert_images_close(np.asarray(ref.adjust_contrast(IMG, factor)), twin, 0.6, 1.5, 2.0)


@pytest.mark.parametrize("factor", [0.0, 0.8, 1.2])
def test_saturation_blends_toward_grayscale(factor):
    gray = luma(PIX)[..., None]
    twin = np.clip(gray + factor * (PIX - gray), 0, 255)
    assert_images_close(np.asarray(ref.adjust_saturation(IMG, factor)), twin, 0.6, 1.5, 2.0)


@pytest.mark.parametrize("hue", [-0.1, 0.05, 0.3])
def test_hue_rotates_hsv_hue(hue):
    twin = np.array([[colorsys.hsv_to_rgb((h + hue) % 1.0, s, v) for h, s, v in
                      (colorsys.rgb_to_hsv(*(px / 255.0)) for px in row)] for row in PIX]) * 255
    # PIL stores H, S, V as uint8: a couple of levels of quantisation error
    assert_images_close(np.asarray(ref.adjust_hue(IMG, hue)), twin, 1.5, 5.0, 12.0)


def test_hue_half_turn_makes_red_cyan():
    r, g, b = ref.adjust_hue(Image.new("RGB", (2, 2), (255, 0, 0)), 0.5).getpixel((0, 0))
    assert r < 10 and g > 240 and b > 240


def test_jitter_order_is_honoured():
    bc = JitterParams((0, 1, 2, 3), 1.3, 0.5, 1.0, 0.0)  # brightness, then contrast
    cb = JitterParams((1, 0, 2, 3), 1.3, 0.5, 1.0, 0.0)  # contrast, then brightness
    img = IMG
    want_bc = ref.adjust_contrast(ref.adjust_brightness(img, 1.3), 0.5)
    want_cb = ref.adjust_brightness(ref.adjust_contrast(img, 0.5), 1.3)
    np.testing.assert_array_equal(np.asarray(ref.apply_jitter(img, bc)), np.asarray(want_bc))
    np.testing.assert_array_equal(np.asarray(ref.apply_jitter(img, cb)), np.asarray(want_cb))
    assert not np.array_equal(np.asarray(want_bc), np.asarray(want_cb))


def test_grayscale_has_equal_channels_equal_to_luma():
    got = view_pixels(dataclasses.replace(plain(), grayscale=True))
    assert is_gray(got, atol=1e-3) and not is_gray(PIX)
    assert_images_close(got[..., 0], luma(PIX), 0.6, 1.0, 1.0)


# ------------------------------------------------------------------------------ blur, solarize
def gaussian_twin(p: np.ndarray, sigma: float) -> np.ndarray:
    """True separable gaussian, edge pixels replicated."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(p, ((r, r), (r, r), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[i:i + p.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, i:i + p.shape[1]] for i in range(2 * r + 1))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_a_gaussian_and_removes_high_frequencies(sigma):
    got = view_pixels(dataclasses.replace(plain(), blur_sigma=sigma))
    assert high_frequency_energy(got) < 0.7 * high_frequency_energy(PIX)
    # PIL approximates the gaussian with box passes: close, not exact
    assert_images_close(got, gaussian_twin(PIX, sigma), 2.0, 10.0)
    assert abs(got.mean() - PIX.mean()) < 1.0


def test_more_blur_removes_more():
    energies = [high_frequency_energy(view_pixels(dataclasses.replace(plain(), blur_sigma=s)))
                for s in (0.5, 1.0, 2.0)]
    assert energies[0] > energies[1] > energies[2]


@pytest.mark.parametrize("threshold", [128, 200])
def test_solarize_inverts_at_or_above_the_spec_threshold(threshold):
    spec = SPEC.with_overrides(solarize_threshold=threshold)
    got = view_pixels(dataclasses.replace(plain(), solarize=True), spec)
    np.testing.assert_allclose(got, np.where(PIX >= threshold, 255 - PIX, PIX), atol=1e-3)
    edge = Image.new("RGB", (1, 1), (threshold - 1, threshold, 255))
    assert ref.solarize(edge, threshold).getpixel((0, 0)) == (threshold - 1, 255 - threshold, 0)


def test_normalisation_uses_the_spec_mean_and_std():
    spec = SPEC.with_overrides(mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0))
    out = ref.to_normalized_tensor(IMG, spec.mean, spec.std).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, (PIX / 255 - [0.5, 0.25, 0.0]) / [0.5, 0.5, 2.0], atol=1e-5)


def test_ops_run_in_recipe_order():
    """flip -> jitter -> gray -> blur -> solarize, composed from the per-op layer."""
    jit = JitterParams((3, 2, 1, 0), 1.2, 0.8, 1.1, 0.05)
    params = ViewParams((2, 3, 40, 40), True, jit, True, 1.0, True)
    want = ref.resized_crop(IMG, params.box, 48, SPEC.interpolation)
    want = ref.solarize(ref.gaussian_blur(ref.to_grayscale(ref.apply_jitter(ref.hflip(want), jit)),
                                          1.0), SPEC.solarize_threshold)
    np.testing.assert_allclose(view_pixels(params), np.asarray(want, np.float64), atol=1e-3)


# ------------------------------------------------------------------------------ rates
def test_per_view_rates_and_output_agree_with_params():
    spec = tiny_spec(local_crops=2)
    mc = ref.ReferenceMultiCrop(spec)
    flags = {"flip": [], "grayscale": [], "blur": [], "solarize": []}
    for i in range(300):
        params = mc.draw(IMG, sample_rng(5, 0, 0, i))
        views = mc.apply(IMG, params)
        for v, p in zip(views, params):  # saturation factors are > 0: only grayscale is gray
            assert is_gray(to_pixels(v, spec.mean, spec.std)) == p.grayscale
        flags["flip"].append([p.flip for p in params])
        flags["grayscale"].append([p.grayscale for p in params])
        flags["blur"].append([p.blur_sigma is not None for p in params])
        flags["solarize"].append([p.solarize for p in params])
    views = spec.views()
    assert_view_rates(flags["flip"], [spec.flip_p] * len(views), "flip")
    assert_view_rates(flags["grayscale"], [spec.grayscale_p] * len(views), "grayscale")
    assert_view_rates(flags["blur"], [v.blur_p for v in views], "blur")
    assert_view_rates(flags["solarize"], [v.solarize_p for v in views], "solarize")


def test_to_pixels_reads_every_layout_back():
    """The fidelity helper that turns executor outputs back into pixels, on all its inputs."""
    chw = torch.from_numpy(PIX.astype(np.uint8)).permute(2, 0, 1)
    normalised = ref.to_normalized_tensor(IMG, SPEC.mean, SPEC.std)
    for x, kw in [(chw, {}), (chw.float() / 255, {}), (PIX.astype(np.uint8), {}),
                  (PIX / 255, {}), (normalised, {"mean": SPEC.mean, "std": SPEC.std})]:
        np.testing.assert_allclose(to_pixels(x, **kw), PIX, atol=1e-3)
