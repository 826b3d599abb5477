"""Crop boxes for the DALI graph: one float32 ``[4]`` ROI per view, the flip folded in.

The graph's only per-view inputs are the region each view is resized from. DALI's
``resize`` takes a relative ROI as ``roi_start = (top, left)``, ``roi_end = (bottom,
right)`` and MIRRORS the output along an axis whose start is past its end, so a flipped view
is the same box with left and right exchanged: no flip operator, no flip input. (Checked
with DALI 2.4: the swapped ROI gives the exact mirror of the plain one, bit for bit.)

Layout of a box (all relative to the image, in [0, 1]):

    0 top / height    1 (left or, flipped, right) / width
    2 bottom / height 3 (right or, flipped, left) / width

Two builders of one layout: ``view_box`` takes one ``ViewParams`` (plain, obviously
correct); ``view_boxes`` takes a batch of ``param_row`` rows, vectorised in numpy for the
feed's hot path, and is tested to give the same bytes.
"""
from __future__ import annotations

import numpy as np

from ..sampling import ViewParams
from ..sampling.param_row import COL

BOX_WIDTH = 4


def view_box(p: ViewParams, width: int, height: int) -> np.ndarray:
    """The ROI of one view of a ``width`` x ``height`` image: float32 [4]."""
    top, left, h, w = p.box
    x0, x1 = left / width, (left + w) / width
    if p.flip:
        x0, x1 = x1, x0
    return np.array([top / height, x0, (top + h) / height, x1], dtype=np.float32)


def view_boxes(rows: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """``view_box`` for a batch of ``param_row`` rows.

    rows: float64 [n, views, param_row.WIDTH]; widths, heights: [n] image sizes.
    Returns float32 [n, views, 4], equal to ``view_box(from_row(rows[i, v]), widths[i],
    heights[i])`` for every i and v.
    """
    n = rows.shape[0]
    wid = np.asarray(widths, dtype=np.float64).reshape(n, 1)
    hgt = np.asarray(heights, dtype=np.float64).reshape(n, 1)
    top, left = rows[..., COL.top], rows[..., COL.left]
    x0, x1 = left / wid, (left + rows[..., COL.width]) / wid
    flipped = rows[..., COL.flip] != 0
    out = np.empty((*rows.shape[:2], BOX_WIDTH), dtype=np.float32)
    out[..., 0] = top / hgt
    out[..., 1] = np.where(flipped, x1, x0)
    out[..., 2] = (top + rows[..., COL.height]) / hgt
    out[..., 3] = np.where(flipped, x0, x1)
    return out
