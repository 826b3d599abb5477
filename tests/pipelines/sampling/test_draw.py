"""Per-view parameter sampling, and the shared fidelity helpers that judge any sampler."""
import math

import numpy as np
import pytest

from pipelines.sampling.counter_stream import CounterRNG, sample_key
from pipelines.sampling import (JITTER_OPS, sample_crop_box, sample_image_params, sample_jitter,
                                sample_rng)
from pipelines.spec import AugmentationSpec
from tests.pipelines.fidelity import (assert_crop_boxes, assert_rate, assert_view_rates,
                                      check_rate, in_spec, ks_critical, ks_statistic)

SPEC = AugmentationSpec()


def draw_boxes(width, height, scale, ratio, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sample_crop_box(width, height, scale, ratio, rng) for _ in range(n)])


@pytest.mark.parametrize("width, height", [(320, 240), (200, 200), (150, 400)])
@pytest.mark.parametrize("view", [SPEC.global_views[0], SPEC.local_view], ids=["global", "local"])
def test_crop_boxes_inside_image_and_in_range(width, height, view):
    boxes = draw_boxes(width, height, view.scale, SPEC.ratio, 500)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    assert in_spec(boxes, width, height, view.scale, SPEC.ratio).all()


def test_local_crop_area_and_log_ratio_are_uniform():
    """Local scales never hit the image border on a square image: no rejection, so the area
    fraction is uniform in scale and log(ratio) uniform in log(ratio range)."""
    scale, ratio = SPEC.local_view.scale, SPEC.ratio
    boxes = draw_boxes(400, 400, scale, ratio, 3000)
    h, w = boxes[:, 2].astype(float), boxes[:, 3].astype(float)
    uniform = np.random.default_rng(99)
    area_ref = uniform.uniform(*scale, 20000)
    logr_ref = uniform.uniform(math.log(ratio[0]), math.log(ratio[1]), 20000)
    crit = ks_critical(len(boxes), 20000) + 0.02  # + integer rounding of w and h
    assert ks_statistic(h * w / 400 ** 2, area_ref) <= crit
    assert ks_statistic(np.log(w / h), logr_ref) <= crit


def test_fallback_is_the_centred_ratio_clamped_box():
    ratio = SPEC.ratio
    rng = np.random.default_rng(0)
    # a 1000x10 strip: no in-range box of >= 90% area fits, so the fallback is used
    assert sample_crop_box(1000, 10, (0.9, 1.0), ratio, rng) == (0, (1000 - 13) // 2, 10, 13)
    assert sample_crop_box(10, 1000, (0.9, 1.0), ratio, rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert sample_crop_box(1, 1, (0.05, 0.4), ratio, rng) == (0, 0, 1, 1)


def test_parameters_are_deterministic_per_stream():
    def params(*key):
        return sample_image_params(SPEC, 320, 240, sample_rng(*key))
    assert params(0, 0, 0, 5) == params(0, 0, 0, 5)
    for other in [(1, 0, 0, 5), (0, 1, 0, 5), (0, 0, 1, 5), (0, 0, 0, 6)]:
        assert params(*other) != params(0, 0, 0, 5), other


def test_sample_rng_is_the_samples_counter_stream_from_its_start():
    """The stream the compiled executors replay: key sample_key(...), counter 0, views
    drawn one after another from it."""
    rng = sample_rng(5, 2, 7, 11)
    assert isinstance(rng, CounterRNG) and rng.counter == 0
    assert rng.key == sample_key(5, 2, 7, 11)
    first = sample_image_params(SPEC, 320, 240, sample_rng(5, 2, 7, 11))
    again = sample_image_params(SPEC, 320, 240, CounterRNG(sample_key(5, 2, 7, 11)))
    assert first == again and len({p.box for p in first}) == SPEC.num_views


def test_one_params_per_view_with_its_own_scale():
    spec = SPEC.with_overrides(local_crops=4)
    draws = [sample_image_params(spec, 300, 300, sample_rng(0, 0, 0, i)) for i in range(100)]
    assert all(len(d) == spec.num_views for d in draws)
    for v, view in enumerate(spec.views()):
        boxes = np.array([d[v].box for d in draws])
        assert in_spec(boxes, 300, 300, view.scale, spec.ratio).all(), f"view {v}"


def test_jitter_parameters_within_spec():
    j = SPEC.jitter
    rng = np.random.default_rng(3)
    draws = [sample_jitter(SPEC, rng) for _ in range(600)]
    assert_rate([d is not None for d in draws], j.p, "jitter applied")
    for d in (d for d in draws if d is not None):
        assert sorted(d.order) == list(range(len(JITTER_OPS)))
        assert 1 - j.brightness <= d.brightness <= 1 + j.brightness
        assert 1 - j.contrast <= d.contrast <= 1 + j.contrast
        assert 1 - j.saturation <= d.saturation <= 1 + j.saturation
        assert -j.hue <= d.hue <= j.hue


def test_per_view_rates_match_spec():
    spec = SPEC.with_overrides(local_crops=2)
    draws = [sample_image_params(spec, 256, 192, sample_rng(1, 0, 0, i)) for i in range(500)]
    views = spec.views()
    assert_view_rates([[p.flip for p in d] for d in draws], [spec.flip_p] * len(views), "flip")
    assert_view_rates([[p.grayscale for p in d] for d in draws],
                      [spec.grayscale_p] * len(views), "grayscale")
    assert_view_rates([[p.blur_sigma is not None for p in d] for d in draws],
                      [v.blur_p for v in views], "blur")
    assert_view_rates([[p.solarize for p in d] for d in draws],
                      [v.solarize_p for v in views], "solarize")
    sigmas = [p.blur_sigma for d in draws for p in d if p.blur_sigma is not None]
    assert spec.blur_sigma[0] <= min(sigmas) and max(sigmas) <= spec.blur_sigma[1]


# ------------------------------------------------------------- the helpers themselves can fail
def test_rate_check_catches_a_wrong_probability():
    flags = np.random.default_rng(0).random(1000) < 0.5
    assert check_rate(flags, 0.5, "fair").ok
    assert not check_rate(flags, 0.38, "biased").ok
    with pytest.raises(AssertionError, match="biased"):
        assert_rate(flags, 0.38, "biased")
    assert not check_rate([True] * 399 + [False], 1.0, "always").ok  # p = 1 is exact
    assert not check_rate([False] * 399 + [True], 0.0, "never").ok  # p = 0 is exact


def test_crop_box_check_passes_spec_boxes_and_catches_wrong_scale():
    scale, ratio = SPEC.global_views[0].scale, SPEC.ratio
    assert_crop_boxes(draw_boxes(320, 240, scale, ratio, 400, seed=7), 320, 240, scale, ratio)
    wrong = draw_boxes(320, 240, (0.2, 1.0), ratio, 400, seed=7)
    with pytest.raises(AssertionError, match="outside scale"):
        assert_crop_boxes(wrong, 320, 240, scale, ratio)
    square_only = draw_boxes(320, 240, scale, (1.0, 1.0), 400, seed=7)
    with pytest.raises(AssertionError, match="distribution differs"):
        assert_crop_boxes(square_only, 320, 240, scale, ratio)
    shifted = draw_boxes(320, 240, scale, ratio, 400, seed=7) + np.array([0, 400, 0, 0])
    with pytest.raises(AssertionError, match="leave"):
        assert_crop_boxes(shifted, 320, 240, scale, ratio)
