"""Batched photometric tensor ops: op by op against the reference (PIL) and exact twins, the
vectorised schedules against the per-sample loop twin, and the rates of drawn parameters.

Tolerances, in pixel levels (0..255), stated once. The tensor ops work in float and never
round; PIL rounds to uint8 after every op.
- brightness, contrast, saturation: mean <= 0.7, max <= 1.5 levels from the reference: PIL
  truncates blend results to uint8 (a -0.5 level bias) and rounds the contrast mean to an
  integer level.
- grayscale: within 1 level (PIL rounds the luma).
- hue: within 0.01 level of an exact float HSV rotation (colorsys); against PIL, which keeps
  hue in 256 steps and shifts by round(255 * shift): mean <= 1.5, p99 <= 10 (as DALI's).
- gaussian blur: within 0.01 level of an exact float gaussian (3-sigma window, replicated
  edges); against PIL's box-blur approximation on a photo, measured here at sigma 0.5 to 2:
  mean <= 1, p99 <= 3, max <= 5 (the DALI tests measure the same PIL gap).
- solarize (on uint8 input), normalise: exact up to float rounding (1e-3 level).
- whole jitter (4 ops, any order) vs the reference: mean <= 2.5, p99 <= 10: the blend
  truncations add up (about -1.5 levels) on top of the hue steps.
- vectorised schedules vs the loop twin: 1e-3 level.
"""
import colorsys
import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import reference as ref
from pipelines.photometric import params as P
from pipelines.photometric import torch_ops as T
from pipelines.sampling import JITTER_OPS, JitterParams, ViewParams
from pipelines.spec import AugmentationSpec, ColorJitterSpec
from tests.pipelines.fidelity import assert_images_close, assert_view_rates, check_rate, to_pixels
from tests.pipelines.images import photo_crop

SPEC = AugmentationSpec()


def _images() -> list[np.ndarray]:
    """A photo crop and random colours with gray pixels and channel ties (every hue case)."""
    photo = np.asarray(photo_crop((40, 32)))
    noise = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    noise[:3] = noise[:3, :, :1]     # gray rows
    noise[3, :, 1] = noise[3, :, 0]  # r == g
    noise[4, :, 2] = noise[4, :, 0]  # r == b
    noise[5, :, 2] = noise[5, :, 1]  # g == b
    return [photo, noise]


IMAGES = _images()
BATCH = T.to_float(torch.from_numpy(np.stack(IMAGES)), channels_last=True)  # [2, 3, 32, 40]


def pixels(x: torch.Tensor) -> list[np.ndarray]:
    """float [n, 3, H, W] in [0, 1] -> n arrays [H, W, 3] in levels."""
    return [to_pixels(img) for img in x]


def pil(op, *args) -> list[np.ndarray]:
    return [np.asarray(op(Image.fromarray(im), *args), dtype=np.float64) for im in IMAGES]


def per_image(value: float) -> torch.Tensor:
    return torch.full((len(IMAGES),), value)


# ------------------------------------------------------------------------------ op by op
@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_blend_ops_match_reference(name, factor):
    op = getattr(T, f"adjust_{name}")
    want = pil(getattr(ref, f"adjust_{name}"), factor)
    for got, w in zip(pixels(op(BATCH.clone(), per_image(factor))), want):
        assert_images_close(got, w, mean_tol=0.7, p99_tol=1.2, max_tol=1.5, what=name)


def test_each_image_gets_its_own_factor():
    factors = torch.tensor([0.5, 1.5])
    got = T.adjust_brightness(BATCH.clone(), factors)
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(got[i], (BATCH[i] * f).clamp(0, 1))


def exact_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """The obviously-correct twin: colorsys HSV rotation, pixel by pixel, in float."""
    out = np.empty(image.shape, dtype=np.float64)
    for idx in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[idx] / 255.0))
        out[idx] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
    return out


@pytest.mark.parametrize("shift", [0.0, 0.1, -0.1, 0.37, -0.5])
def test_hue_is_a_true_hsv_rotation(shift):
    got = pixels(T.adjust_hue(BATCH, per_image(shift)))
    for g, image, p in zip(got, IMAGES, pil(ref.adjust_hue, shift)):
        assert_images_close(g, exact_hue(image, shift), 0.01, 0.01, 0.01, f"hue {shift} exact")
        assert_images_close(g, p, mean_tol=1.5, p99_tol=10, what=f"hue {shift} vs PIL")


def test_grayscale_is_pil_luma_and_only_where_asked():
    got = pixels(T.to_grayscale(BATCH, torch.tensor([True, False])))
    assert_images_close(got[0], pil(ref.to_grayscale)[0], 0.5, 1, 1, "grayscale")
    assert np.ptp(got[0], axis=2).max() < 1e-3
    np.testing.assert_allclose(got[1], IMAGES[1], atol=1e-3)


def gaussian_twin(image: np.ndarray, sigma: float) -> np.ndarray:
    """Exact float gaussian: 3-sigma window, edge pixels replicated, separable, float64."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[i:i + image.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, i:i + image.shape[1]] for i in range(2 * r + 1))


@pytest.mark.parametrize("method", ["shift", "conv"])
@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_blur_is_an_exact_gaussian(sigma, method):
    # a window wider than the sample's own 3 sigma must not change the result
    got = pixels(T.gaussian_blur(BATCH, per_image(sigma), radius=7, method=method))
    for g, image in zip(got, IMAGES):
        assert_images_close(g, gaussian_twin(image, sigma), 0.01, 0.01, 0.01, f"blur {sigma}")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_close_to_reference_on_a_photo(sigma):
    """PIL approximates the gaussian with box blurs: the measured gap, away from borders."""
    got = pixels(T.gaussian_blur(BATCH[:1], torch.tensor([sigma]), T.blur_radius(sigma)))[0]
    want = pil(ref.gaussian_blur, sigma)[0]
    assert_images_close(got[6:-6, 6:-6], want[6:-6, 6:-6], mean_tol=1.0, p99_tol=3, max_tol=5,
                        what=f"blur {sigma} vs PIL")


@pytest.mark.parametrize("threshold", [128, 200])
def test_solarize_matches_reference_on_uint8_levels(threshold):
    got = pixels(T.solarize(BATCH.clone(), torch.tensor([True, False]), threshold))
    np.testing.assert_allclose(got[0], pil(ref.solarize, threshold)[0], atol=1e-3)
    np.testing.assert_allclose(got[1], IMAGES[1], atol=1e-3)


def test_normalize_matches_reference():
    spec = SPEC.with_overrides(mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0))
    got = T.PhotometricOps(spec).normalize(BATCH)
    for g, image in zip(got, IMAGES):
        want = ref.to_normalized_tensor(Image.fromarray(image), spec.mean, spec.std)
        torch.testing.assert_close(g, want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ whole views
def reference_chain(image: np.ndarray, p: ViewParams) -> np.ndarray:
    """The reference's per-op functions in recipe order (no crop: the box is the image)."""
    img = Image.fromarray(image)
    if p.jitter is not None:
        img = ref.apply_jitter(img, p.jitter)
    if p.grayscale:
        img = ref.to_grayscale(img)
    if p.blur_sigma is not None:
        img = ref.gaussian_blur(img, p.blur_sigma)
    if p.solarize:
        img = ref.solarize(img, SPEC.solarize_threshold)
    return np.asarray(img, np.float64)


def explicit(order, grayscale=False, sigma=None, solarize=False) -> ViewParams:
    jitter = JitterParams(order, 1.3, 0.7, 1.2, 0.08) if order is not None else None
    return ViewParams((0, 0, 32, 40), False, jitter, grayscale, sigma, solarize)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
def test_jitter_orders_match_the_reference(order):
    params = [explicit(order)] * 2
    got = pixels(T.apply_photometric(BATCH, P.params_from_views(params), SPEC))
    for g, image, p in zip(got, IMAGES, params):
        # three truncating PIL blends (-0.5 level each) and PIL's 256-step hue
        assert_images_close(g, reference_chain(image, p), mean_tol=2.5, p99_tol=10,
                            what=f"jitter {[JITTER_OPS[i] for i in order]}")


def test_full_view_matches_the_reference():
    """jitter -> gray -> blur -> solarize with fixed parameters, whole-image box."""
    cases = [explicit((3, 0, 2, 1), sigma=1.0, solarize=True),
             explicit((1, 2, 0, 3), grayscale=True, sigma=0.6)]
    got = pixels(T.apply_photometric(BATCH, P.params_from_views(cases), SPEC))
    for g, image, p in zip(got, IMAGES, cases):
        # hue quantisation, blur approximation and solarize flips near 128 add up
        assert_images_close(g, reference_chain(image, p), mean_tol=3.0, p99_tol=40,
                            what="full view")


# ------------------------------------------------------------------------------ twins
def loop_twin(x: torch.Tensor, p: P.PhotometricParams, spec: AugmentationSpec) -> torch.Tensor:
    """The per-sample twin of ``apply_photometric``: one image at a time, the ops in each
    image's order, blur as a direct 2-d convolution with the outer product of the kernel."""
    ops = {T.BRIGHTNESS: T.adjust_brightness, T.CONTRAST: T.adjust_contrast,
           T.SATURATION: T.adjust_saturation}
    out = []
    for i in range(x.shape[0]):
        img = x[i:i + 1]
        if bool(p.jitter[i]):
            for op in p.order[i].tolist():
                if op == T.HUE:
                    img = T.adjust_hue(img, p.hue[i:i + 1])
                else:
                    img = ops[op](img, p.factors[i:i + 1, op])
        if bool(p.grayscale[i]):
            img = T.luma(img).expand(1, 3, *img.shape[2:])
        if bool(p.blur[i]):
            r = T.blur_radius(float(p.sigma[i]))
            k1 = T.gaussian_kernels(p.sigma[i:i + 1], r)[0]
            k2 = torch.outer(k1, k1).expand(3, 1, 2 * r + 1, 2 * r + 1)
            img = F.conv2d(F.pad(img, (r, r, r, r), mode="replicate"), k2, groups=3)
        if bool(p.solarize[i]):
            img = torch.where(img * 255.0 >= spec.solarize_threshold - 0.5, 1.0 - img, img)
        out.append(img)
    return torch.cat(out)


def random_params(n: int, seed: int) -> P.PhotometricParams:
    """Drawn with every probability at 1/2, so all branches and all 24 orders occur."""
    spec = SPEC.with_overrides(jitter=ColorJitterSpec(p=0.5), grayscale_p=0.5)
    views = [dataclasses.replace(SPEC.local_view, blur_p=0.5, solarize_p=0.5)]
    return P.draw_params(spec, views, n, torch.Generator().manual_seed(seed), "cpu")


@pytest.mark.parametrize("schedule", ["grouped", "rounds"])
def test_vectorised_matches_loop_twin(schedule):
    n = 96
    x = torch.rand(n, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    p = random_params(n, seed=2)
    assert len({tuple(o) for o in p.order.tolist()}) == 24
    got = T.apply_photometric(x, p, SPEC, schedule)
    torch.testing.assert_close(got, loop_twin(x, p, SPEC), atol=4e-6, rtol=0)
    assert not torch.equal(got, x)


def test_input_is_not_modified_and_chunking_changes_nothing(monkeypatch):
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    p = random_params(20, seed=4)
    whole = T.apply_photometric(x, p, SPEC)
    monkeypatch.setattr(T, "CPU_CHUNK_BYTES", 3 * 8 * 8 * 4 * 3)  # chunks of 3 images
    assert len(T.cpu_chunks(20, 3 * 8 * 8 * 4)) == 7
    torch.testing.assert_close(T.apply_photometric(x, p, SPEC), whole, atol=1e-6, rtol=0)
    assert torch.equal(x, before)


def test_photometric_ops_on_uint8_views():
    spec = SPEC.with_overrides(output_dtype="bfloat16")
    images = torch.from_numpy(np.stack(IMAGES * 3))  # 3 views x 2 samples, channels last
    gen = torch.Generator().manual_seed(0)
    out = T.PhotometricOps(spec)(images, spec.views()[:3], gen)
    assert out.shape == (6, 3, 32, 40) and out.dtype == torch.bfloat16
    params = P.draw_params(spec, spec.views()[:3], 2, torch.Generator().manual_seed(0), "cpu")
    want = T.apply_photometric(T.to_float(images, True), params, spec)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    want = (want - mean) / std
    torch.testing.assert_close(out, want.to(torch.bfloat16))


# ------------------------------------------------------------------------------ statistics
def test_drawn_parameters_follow_the_spec():
    """A few hundred samples per view of the default recipe: rates, ranges, orders."""
    n, views = 400, SPEC.views()
    p = P.draw_params(SPEC, views, n, torch.Generator().manual_seed(5), "cpu")
    by_view = lambda t: t.view(len(views), n).T.numpy()  # noqa: E731  [n, views]
    assert_view_rates(by_view(p.blur), [v.blur_p for v in views], "blur")
    assert_view_rates(by_view(p.solarize), [v.solarize_p for v in views], "solarize")
    assert check_rate(p.jitter.numpy(), SPEC.jitter.p, "jitter").ok
    assert check_rate(p.grayscale.numpy(), SPEC.grayscale_p, "grayscale").ok
    j = SPEC.jitter
    for col, x in enumerate((j.brightness, j.contrast, j.saturation)):
        f = p.factors[:, col]
        assert f.min() >= 1 - x and f.max() <= 1 + x and abs(float(f.mean()) - 1) < 0.02
    assert p.hue.abs().max() <= j.hue and abs(float(p.hue.mean())) < 0.005
    assert p.sigma.min() >= SPEC.blur_sigma[0] and p.sigma.max() <= SPEC.blur_sigma[1]
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(len(p), 4))
    first = np.bincount(p.order[:, 0].numpy(), minlength=4)  # each op leads ~1/4 of the time
    for op in range(4):
        assert check_rate(p.order[:, 0].numpy() == op, 0.25, f"{JITTER_OPS[op]} first").ok, first


@pytest.mark.gpu
def test_cuda_path_matches_cpu_path():
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    p = random_params(24, seed=7)
    cuda = P.PhotometricParams(*(getattr(p, f.name).cuda() if f.name != "max_sigma" else p.max_sigma
                                 for f in dataclasses.fields(p)))
    got = T.apply_photometric(x.cuda(), cuda, SPEC).cpu()
    torch.testing.assert_close(got, T.apply_photometric(x, p, SPEC), atol=1e-5, rtol=0)
