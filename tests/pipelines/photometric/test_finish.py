"""pipelines.photometric.finish: every implementation behind ``finish_views`` computes the
same views from the same rows (within the twin tolerance of test_cpu_kernel.py), and bad
input is refused with a message that says what was expected."""
import numpy as np
import pytest
import torch

from pipelines.photometric import finish as F
from pipelines.photometric import params as P
from pipelines.sampling import param_row, sample_image_params, sample_rng
from pipelines.spec import AugmentationSpec
from tests.pipelines.photometric.test_cpu_kernel import ATOL, images

SPEC = AugmentationSpec()


def recipe_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Rows of the real recipe (global and local views mixed), drawn from the stream."""
    views = [v for i in range(n) for v in sample_image_params(SPEC, size, size,
                                                             sample_rng(seed, 0, 0, i))]
    return param_row.to_rows(views[:n])


def test_params_from_rows_equals_params_from_views():
    rows = recipe_rows(40, 96)
    a = P.params_from_rows(torch.from_numpy(rows), SPEC)
    b = P.params_from_views([param_row.from_row(r) for r in rows])
    for name in ("jitter", "order", "factors", "hue", "grayscale", "blur", "solarize"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    on = b.blur
    assert torch.equal(a.sigma[on], b.sigma[on])
    assert a.max_sigma == SPEC.blur_sigma[1] >= b.max_sigma


@pytest.mark.parametrize("size", [96, 13])
def test_cpu_kernel_and_torch_impls_agree(size):
    pytest.importorskip("numba")
    imgs = np.ascontiguousarray(np.concatenate([images(size)] * 12))
    rows = recipe_rows(len(imgs), size, seed=size)
    crops = torch.from_numpy(imgs)
    a = F.finish_views(crops, rows, SPEC, impl="cpu_kernel")
    b = F.finish_views(crops, torch.from_numpy(rows), SPEC, impl="torch")
    assert a.shape == b.shape == (len(imgs), 3, size, size) and a.dtype == torch.float32
    assert (a - b).abs().max().item() <= ATOL


def test_output_dtype_follows_the_spec():
    spec = AugmentationSpec(output_dtype="bfloat16")
    imgs = torch.from_numpy(images(13))
    out = F.finish_views(imgs, recipe_rows(2, 13), spec)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 13, 13)


def test_auto_on_the_cpu_picks_the_numba_kernel_when_installed():
    pytest.importorskip("numba")
    assert F.finisher("cpu") is F._cpu_kernel


def test_bad_input_is_refused_with_what_was_expected():
    imgs = torch.from_numpy(images(13))
    with pytest.raises(ValueError, match="uint8"):
        F.finish_views(imgs.float(), recipe_rows(2, 13), SPEC)
    with pytest.raises(ValueError, match="one parameter row per view"):
        F.finish_views(imgs, recipe_rows(3, 13), SPEC)
    with pytest.raises(ValueError, match="impl must be one of"):
        F.finish_views(imgs, recipe_rows(2, 13), SPEC, impl="pil")
    with pytest.raises(ValueError, match="needs CUDA crops"):
        F.finish_views(imgs, recipe_rows(2, 13), SPEC, impl="cuda")


def test_empty_batch():
    out = F.finish_views(torch.empty((0, 13, 13, 3), dtype=torch.uint8),
                         np.empty((0, param_row.WIDTH)), SPEC)
    assert out.shape == (0, 3, 13, 13)


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_finish_many_equals_finish_views_per_size(impl):
    """One call for a whole multi-crop batch (two sizes, an empty one between them) gives,
    batch by batch, exactly what ``finish_views`` gives for each size alone."""
    sizes = [(24, 6), (13, 0), (13, 10)]
    batches = []
    for size, n in sizes:
        imgs = np.ascontiguousarray(np.concatenate([images(size)] * 5)[:n])
        batches.append((torch.from_numpy(imgs), recipe_rows(n, size, seed=size + n)))
    together = F.finish_many(batches, SPEC, impl)
    assert [tuple(t.shape) for t in together] == [(n, 3, s, s) for s, n in sizes]
    for (crops, rows), got in zip(batches, together):
        assert torch.equal(got, F.finish_views(crops, rows, SPEC, impl))


def test_finish_many_of_nothing_and_bad_input():
    assert F.finish_many([], SPEC) == []
    imgs = torch.from_numpy(images(13))
    with pytest.raises(ValueError, match="finish_many needs one parameter row per view"):
        F.finish_many([(imgs, recipe_rows(2, 13)), (imgs, recipe_rows(3, 13))], SPEC)


@pytest.mark.gpu
def test_finish_many_on_a_gpu_equals_finish_views_per_size():
    """On a GPU the kernel finishes both sizes in one call (cuda.finish_many): the same
    views as one call per size (the torch ops when the kernel library is not built)."""
    batches = []
    for size, n in ((32, 4), (16, 8)):
        imgs = np.ascontiguousarray(np.concatenate([images(size)] * 4)[:n])
        batches.append((torch.from_numpy(imgs).cuda(),
                        torch.from_numpy(recipe_rows(n, size, seed=size)).cuda()))
    together = F.finish_many(batches, SPEC)
    for (crops, rows), got in zip(batches, together):
        assert got.device.type == "cuda"
        assert torch.equal(got, F.finish_views(crops, rows, SPEC))
