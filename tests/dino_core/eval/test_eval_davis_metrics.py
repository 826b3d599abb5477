"""DAVIS J and F against values computed by hand, and the dilation against its twin."""
import numpy as np
import pytest

from dino_core.eval.davis_metrics import (boundary_map, boundary_measure, dilate,
                                          dilate_reference, region_similarity, score_sequence,
                                          summarise, tolerance_pixels)


def square(top=2, left=2, side=4, shape=(10, 10)):
    m = np.zeros(shape, dtype=bool)
    m[top:top + side, left:left + side] = True
    return m


def test_boundary_of_a_square_follows_the_davis_convention():
    """Rows/cols 2..5 filled: the boundary is the square's last row and column (7 pixels)
    plus the outside row above and column left of it, corner included (9 pixels)."""
    b = boundary_map(square())
    want = np.zeros((10, 10), dtype=bool)
    want[1, 1:6] = want[1:6, 1] = True        # outside: row 1 and column 1, cols/rows 1..5
    want[5, 2:6] = want[2:6, 5] = True        # inside: last row and last column
    assert np.array_equal(b, want) and b.sum() == 16


def test_a_square_shifted_by_one_pixel():
    """4x4 square moved right by 1 px: overlap 4x3 = 12, union 16 + 16 - 12 = 20, J = 0.6.
    The standard tolerance on a 10x10 image is ceil(0.008 * 14.14) = 1 px: every boundary
    pixel has a partner 1 px away, F = 1. With no tolerance only the top and bottom rows of
    the two boundaries coincide (4 + 4 of 16 pixels each): P = R = 0.5, F = 0.5."""
    gt, pred = square(), square(left=3)
    assert region_similarity(pred, gt) == pytest.approx(0.6)
    assert tolerance_pixels(gt.shape) == 1
    assert boundary_measure(pred, gt) == pytest.approx(1.0)
    assert boundary_measure(pred, gt, tolerance=0) == pytest.approx(0.5)


def test_an_empty_prediction():
    """Nothing predicted: J = 0; boundary precision 1, recall 0, F = 0. Nothing on either
    side: J = 1 and F = 1. Something predicted where nothing is: J = 0, F = 0."""
    gt, empty = square(), np.zeros((10, 10), dtype=bool)
    assert region_similarity(empty, gt) == 0.0 and boundary_measure(empty, gt) == 0.0
    assert region_similarity(empty, empty) == 1.0 and boundary_measure(empty, empty) == 1.0
    assert region_similarity(gt, empty) == 0.0 and boundary_measure(gt, empty) == 0.0


def test_a_thin_line_shifted_by_one_pixel_has_no_overlap_but_the_same_boundary():
    """A 1-px-wide vertical line (rows 2..7) moved right by 1 px: no common pixel, J = 0. Its
    boundary (the line, the column left of it and the pixel above: 14 px) is 1 px from the
    other's: F = 1. With no tolerance, the moved line's left column (7 px, the pixel above
    included) is the original line's own column: P = R = 7/14, F = 0.5."""
    gt = np.zeros((10, 10), dtype=bool)
    gt[2:8, 4] = True
    pred = np.roll(gt, 1, axis=1)
    assert boundary_map(gt).sum() == 14
    assert region_similarity(pred, gt) == 0.0
    assert boundary_measure(pred, gt) == pytest.approx(1.0)
    assert boundary_measure(pred, gt, tolerance=0) == pytest.approx(0.5)


def test_void_pixels_are_ignored():
    """A prediction spilling only into void pixels scores as if it did not spill."""
    gt = square()
    void = np.zeros_like(gt)
    void[:, 7:] = True
    pred = gt.copy()
    pred[3, 8] = True
    assert region_similarity(pred, gt) == pytest.approx(16 / 17)
    assert region_similarity(pred, gt, void) == 1.0
    assert boundary_measure(pred, gt, void) == 1.0


def test_tolerance_on_a_davis_frame():
    assert tolerance_pixels((480, 854)) == 8   # ceil(0.008 * 979.7)
    assert tolerance_pixels((480, 854), tolerance=3) == 3


def test_dilation_equals_its_twin():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 23, 31)) < 0.03
    for radius in (0, 1, 3, 8):
        fast = dilate(masks, radius)
        for m, f in zip(masks, fast):
            assert np.array_equal(f, dilate_reference(m, radius)), radius


def test_scores_leave_out_the_first_and_last_frames_and_average_per_object():
    """Two objects, four frames: frames 1 and 2 are scored. Object 1 is perfect there; object 2
    is missed in frame 2 (J 0). The last frame is wrong everywhere and does not count."""
    gt = np.zeros((4, 10, 10), dtype=np.uint8)
    gt[:, 1:4, 1:4] = 1
    gt[:, 6:9, 6:9] = 2
    pred = gt.copy()
    pred[2][pred[2] == 2] = 0
    pred[3] = 0
    s = score_sequence("two", pred, gt)
    assert s.j.shape == (2, 2)
    assert np.array_equal(s.j, [[1, 1], [1, 0]]) and np.array_equal(s.f, [[1, 1], [1, 0]])
    summary = summarise([s])
    assert summary.j_mean == pytest.approx(0.75) and summary.jf_mean == pytest.approx(0.75)
    assert summary.j_recall == pytest.approx(0.75) and summary.objects == 2
    with pytest.raises(ValueError, match="differ in shape"):
        score_sequence("bad", pred[:, :5], gt)
