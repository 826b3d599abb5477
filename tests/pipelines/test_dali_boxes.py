"""Crop boxes for the DALI graph (pure numpy: runs without DALI or numba).

``view_boxes`` (batched, vectorised) is tested bitwise against ``view_box`` (per view).
"""
import numpy as np
import pytest

from pipelines.dali_backend.boxes import BOX_WIDTH, view_box, view_boxes
from pipelines.sampling import ViewParams, param_row, sample_image_params, sample_rng
from pipelines.spec import AugmentationSpec


def test_view_box_is_the_relative_box_with_the_flip_folded_in():
    plain = ViewParams(box=(10, 20, 30, 40), flip=False, jitter=None, grayscale=True,
                       blur_sigma=0.7, solarize=False)
    box = view_box(plain, width=100, height=50)
    assert box.shape == (BOX_WIDTH,) and box.dtype == np.float32
    np.testing.assert_allclose(box, [0.2, 0.2, 0.8, 0.6], rtol=1e-6)
    flipped = view_box(ViewParams(plain.box, True, None, True, 0.7, False), 100, 50)
    np.testing.assert_array_equal(flipped, box[[0, 3, 2, 1]])
    whole = view_box(ViewParams((0, 0, 50, 100), False, None, False, None, True), 100, 50)
    np.testing.assert_array_equal(whole, [0, 0, 1, 1])


def _rows_and_sizes(spec, n, seed):
    """Plain-drawn rows of n images of random sizes (tiny ones included)."""
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 900, (n, 2))] + [(1, 1), (3, 700)]
    rows = np.stack([param_row.to_rows(sample_image_params(spec, w, h, sample_rng(seed, 0, 1, i)))
                     for i, (w, h) in enumerate(sizes)])
    return rows, np.array([w for w, _ in sizes]), np.array([h for _, h in sizes])


@pytest.mark.parametrize("flip_p", [0.5, 1.0, 0.0])
def test_view_boxes_is_view_box_on_every_view(flip_p):
    spec = AugmentationSpec(local_crops=3, flip_p=flip_p)
    rows, widths, heights = _rows_and_sizes(spec, 300, seed=int(flip_p * 10))
    boxes = view_boxes(rows, widths, heights)
    assert boxes.shape == (len(rows), spec.num_views, BOX_WIDTH) and boxes.dtype == np.float32
    flipped = 0
    for got, r, w, h in zip(boxes, rows, widths, heights):
        for box, row in zip(got, r):
            want = view_box(param_row.from_row(row), int(w), int(h))
            assert np.array_equal(box.view(np.uint32), want.view(np.uint32))
            flipped += bool(row[param_row.COL.flip])
            assert (box[1] > box[3]) == bool(row[param_row.COL.flip])
            assert 0 <= box.min() and box.max() <= 1
    if flip_p in (0.0, 1.0):
        assert flipped == (boxes.shape[0] * boxes.shape[1] if flip_p else 0)
