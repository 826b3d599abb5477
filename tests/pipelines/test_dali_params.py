"""Packing view parameters for the DALI graph (pure numpy: runs without DALI or numba).

``pack_rows`` (batched, vectorised) is tested bitwise against ``pack_image`` (per view).
"""
import itertools
import math

import numpy as np
import pytest

from pipelines.sampling import param_row as pr
from pipelines.dali_backend.params import (JITTER_SLOTS, LAYOUT, blur_window, jitter_slots,
                                           pack_image, pack_rows, pack_view, slot_assignment)
from pipelines.sampling import (JITTER_OPS, JitterParams, ViewParams, sample_image_params,
                                sample_rng)
from pipelines.spec import AugmentationSpec, ColorJitterSpec

LETTER = {"brightness": "B", "contrast": "C", "saturation": "S", "hue": "H"}


def _replay(slots: np.ndarray, jitter: JitterParams) -> list[tuple[str, float]]:
    """The non-identity slots in graph order: what the graph applies, as (op, factor)."""
    identity = {"B": 1.0, "C": 1.0, "S": 1.0, "H": 0.0}
    return [(letter, float(v)) for letter, v in zip(JITTER_SLOTS, slots)
            if v != identity[letter]]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_order_is_realised_by_the_slots(order):
    j = JitterParams(order, 1.25, 0.75, 1.5, 0.0625)
    slots = slot_assignment(order)
    assert list(slots) == sorted(set(slots)) and len(slots) == 4
    assert [JITTER_SLOTS[s] for s in slots] == [LETTER[JITTER_OPS[o]] for o in order]
    value = {"brightness": 1.25, "contrast": 0.75, "saturation": 1.5, "hue": 0.0625}
    want = [(LETTER[JITTER_OPS[o]], value[JITTER_OPS[o]]) for o in order]
    assert _replay(jitter_slots(j), j) == want


def test_no_jitter_is_all_identity():
    row = jitter_slots(None)
    assert _replay(row, None) == [] and row.dtype == np.float32


def test_slots_reject_an_order_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        slot_assignment((3, 3))  # hue appears once only


def test_blur_window_covers_three_sigma():
    for sigma in (0.1, 0.33, 1.0, 1.01, 2.0):
        w = blur_window(sigma)
        assert w % 2 == 1 and (w - 1) / 2 >= 3 * sigma and (w - 3) / 2 < 3 * sigma
    assert blur_window(2.0) == 13 and blur_window(0.1) == 3


def test_pack_view_fields():
    p = ViewParams(box=(10, 20, 30, 40), flip=True, jitter=None, grayscale=True,
                   blur_sigma=0.7, solarize=False)
    row = pack_view(p, width=100, height=50)
    assert row.shape == (LAYOUT.width,) and row.dtype == np.float32
    np.testing.assert_allclose(row[LAYOUT.box:LAYOUT.box + 4], [0.2, 0.2, 0.8, 0.6], rtol=1e-6)
    assert row[LAYOUT.flip] == 1 and row[LAYOUT.gray] == 1 and row[LAYOUT.solarize] == 0
    assert row[LAYOUT.sigma] == pytest.approx(0.7) and row[LAYOUT.window] == 2 * math.ceil(2.1) + 1
    q = pack_view(ViewParams((0, 0, 50, 100), False, None, False, None, True), 100, 50)
    assert q[LAYOUT.window] == 1 and q[LAYOUT.solarize] == 1 and q[LAYOUT.gray] == 0
    np.testing.assert_array_equal(q[LAYOUT.box:LAYOUT.box + 4], [0, 0, 1, 1])


def test_layout_columns_are_distinct_and_fill_the_row():
    cols = [LAYOUT.flip, LAYOUT.gray, LAYOUT.sigma, LAYOUT.window, LAYOUT.solarize]
    cols += list(range(LAYOUT.box, LAYOUT.box + 4))
    cols += list(range(LAYOUT.slots, LAYOUT.slots + len(JITTER_SLOTS)))
    assert sorted(cols) == list(range(LAYOUT.width))


def test_pack_image_stacks_views_of_the_spec():
    spec = AugmentationSpec()
    params = sample_image_params(spec, 120, 90, sample_rng(0, 0, 0, 3))
    packed = pack_image(params, 120, 90)
    assert packed.shape == (spec.num_views, LAYOUT.width)
    for row, p in zip(packed, params):
        np.testing.assert_array_equal(row, pack_view(p, 120, 90))


# ------------------------------------------------------------- batched twin: pack_rows
def _rows_and_sizes(spec, n, seed):
    """Plain-drawn rows of n images of random sizes (tiny ones included)."""
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 900, (n, 2))] + [(1, 1), (3, 700)]
    rows = np.stack([pr.to_rows(sample_image_params(spec, w, h, sample_rng(seed, 0, 1, i)))
                     for i, (w, h) in enumerate(sizes)])
    return rows, np.array([w for w, _ in sizes]), np.array([h for _, h in sizes])


@pytest.mark.parametrize("spec", [AugmentationSpec(),
                                  AugmentationSpec(local_crops=3, flip_p=1.0, grayscale_p=1.0,
                                                   jitter=ColorJitterSpec(p=1.0, hue=0.5)),
                                  AugmentationSpec(local_crops=0,
                                                   jitter=ColorJitterSpec(p=0.0))],
                         ids=["default", "always", "never"])
def test_pack_rows_is_pack_image_on_every_sample(spec):
    rows, widths, heights = _rows_and_sizes(spec, 300, seed=spec.local_crops)
    packed = pack_rows(rows, widths, heights)
    assert packed.shape == (len(rows), spec.num_views, LAYOUT.width)
    assert packed.dtype == np.float32
    for got, r, w, h in zip(packed, rows, widths, heights):
        want = pack_image([pr.from_row(x) for x in r], int(w), int(h))
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_pack_rows_places_every_jitter_order():
    rows = []
    for k, order in enumerate(itertools.permutations(range(4))):
        j = JitterParams(order, 1.0 + k / 64, 0.5 + k / 64, 1.5 - k / 64, k / 200 - 0.06)
        rows.append(pr.to_row(ViewParams((1, 2, 3, 4), bool(k % 2), j, False,
                                         0.2 + k / 10 if k % 3 else None, bool(k % 5))))
    rows = np.stack(rows)[None]  # one image with 24 views
    packed = pack_rows(rows, np.array([10]), np.array([9]))[0]
    for got, r in zip(packed, rows[0]):
        np.testing.assert_array_equal(got, pack_view(pr.from_row(r), 10, 9))


def test_pack_rows_rejects_an_order_that_is_not_a_permutation():
    row = pr.to_row(ViewParams((0, 0, 1, 1), False, JitterParams((0, 1, 2, 3), 1, 1, 1, 0),
                               False, None, False))
    row[pr.ORDER] = (0, 0, 2, 3)
    with pytest.raises(ValueError, match="permutation"):
        pack_rows(row[None, None], np.array([1]), np.array([1]))
