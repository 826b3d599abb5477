"""Per-view parameters packed for the DALI graph: one float32 row per view.

The DALI executor does not draw randomness in the graph: the feed draws every view of a
batch with ``pipelines.sampling.compiled_draw.draw_batch_rows`` (the compiled twin of
``pipelines.sampling``, on the reference executor's streams ``sample_rng(seed, rank, epoch,
index)``), packs them here and feeds them next to the JPEG bytes. So one seed gives the same
crops, flips, jitter, grayscale, blur and solarize as the reference, a run resumes exactly,
and tests can force any parameter.

Two packers of one layout: ``pack_view`` / ``pack_image`` take ``ViewParams`` one view at a
time (plain, obviously correct); ``pack_rows`` takes a batch of ``param_row`` rows, vectorised
in numpy for the feed's hot path, and is tested to give the same bytes.

Random jitter order in a static graph: the graph runs a fixed sequence of op slots,
``JITTER_SLOTS`` = ``BSBCBSB H BSBCBSB`` (B brightness, S saturation, C contrast, H hue).
Every one of the 24 orders of the four ops is a subsequence of it, so a sample's order is
realised by giving its four factors to the slots of one embedding (the earliest, found
greedily) and the identity (factor 1, hue shift 0) to every other slot. The expensive ops,
hue and contrast, appear once and twice; the cheap native ones fill the rest.

Row layout (``LAYOUT``; all float32):
    box        4  crop box relative to the image: (top, left, bottom, right) in [0, 1]
    flip       1  1 = mirrored
    slots     15  one factor per jitter slot (hue slot: shift in turns)
    gray       1  1 = converted to grayscale
    sigma      1  blur sigma (1 when not blurred; unused then)
    window     1  blur window in taps: 2 * ceil(3 sigma) + 1 when blurred, else 1
    solarize   1  1 = solarized
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..sampling.param_row import COL, ORDER
from ..sampling import JITTER_OPS, JitterParams, ViewParams

JITTER_SLOTS = "BSBCBSBHBSBCBSB"
_OP_LETTER = {"brightness": "B", "contrast": "C", "saturation": "S", "hue": "H"}
_IDENTITY = {"B": 1.0, "C": 1.0, "S": 1.0, "H": 0.0}


@dataclass(frozen=True)
class Layout:
    """Column offsets of a packed view row."""

    box: int = 0
    flip: int = 4
    slots: int = 5
    gray: int = 5 + len(JITTER_SLOTS)
    sigma: int = 6 + len(JITTER_SLOTS)
    window: int = 7 + len(JITTER_SLOTS)
    solarize: int = 8 + len(JITTER_SLOTS)
    width: int = 9 + len(JITTER_SLOTS)


LAYOUT = Layout()


def slot_assignment(order: tuple[int, ...]) -> tuple[int, ...]:
    """Slot index of each op of ``order`` (indices into JITTER_OPS), in order.

    Greedy earliest match of the order's letters in JITTER_SLOTS; raises ValueError if the
    order is not a subsequence (it always is for the 24 permutations).
    """
    slots, pos = [], 0
    for op in order:
        letter = _OP_LETTER[JITTER_OPS[op]]
        while pos < len(JITTER_SLOTS) and JITTER_SLOTS[pos] != letter:
            pos += 1
        if pos == len(JITTER_SLOTS):
            raise ValueError(f"jitter order {order} does not fit the slots {JITTER_SLOTS}")
        slots.append(pos)
        pos += 1
    return tuple(slots)


def _identity_slots() -> np.ndarray:
    return np.array([_IDENTITY[s] for s in JITTER_SLOTS], dtype=np.float32)


_IDENTITY_ROW = _identity_slots()


def jitter_slots(jitter: JitterParams | None) -> np.ndarray:
    """The 15 slot factors realising ``jitter`` (identity everywhere when None)."""
    out = _IDENTITY_ROW.copy()
    if jitter is None:
        return out
    values = {"brightness": jitter.brightness, "contrast": jitter.contrast,
              "saturation": jitter.saturation, "hue": jitter.hue}
    for op, slot in zip(jitter.order, slot_assignment(jitter.order)):
        out[slot] = values[JITTER_OPS[op]]
    return out


def blur_window(sigma: float) -> int:
    """Taps of a Gaussian window that covers 3 sigma on each side."""
    return 2 * math.ceil(3.0 * sigma) + 1


def pack_view(p: ViewParams, width: int, height: int) -> np.ndarray:
    """One view's parameters for an image of ``width`` x ``height``: float32 [LAYOUT.width]."""
    row = np.empty(LAYOUT.width, dtype=np.float32)
    top, left, h, w = p.box
    row[LAYOUT.box:LAYOUT.box + 4] = (top / height, left / width, (top + h) / height,
                                      (left + w) / width)
    row[LAYOUT.flip] = float(p.flip)
    row[LAYOUT.slots:LAYOUT.slots + len(JITTER_SLOTS)] = jitter_slots(p.jitter)
    row[LAYOUT.gray] = float(p.grayscale)
    blurred = p.blur_sigma is not None
    row[LAYOUT.sigma] = p.blur_sigma if blurred else 1.0
    row[LAYOUT.window] = blur_window(p.blur_sigma) if blurred else 1.0
    row[LAYOUT.solarize] = float(p.solarize)
    return row


def pack_image(params: list[ViewParams], width: int, height: int) -> np.ndarray:
    """All views of one image: float32 [num_views, LAYOUT.width]."""
    return np.stack([pack_view(p, width, height) for p in params])


# ----------------------------------------------------------------------------- batched twin
_CODE_WEIGHTS = len(JITTER_OPS) ** np.arange(len(JITTER_OPS))  # order -> base-4 code


def _slot_table() -> np.ndarray:
    """int64 [4 ** 4, 4]: ``slot_assignment(order)`` at the order's code; -1 for codes that
    are not permutations."""
    table = np.full((len(JITTER_OPS) ** len(JITTER_OPS), len(JITTER_OPS)), -1, np.int64)
    for order in itertools.permutations(range(len(JITTER_OPS))):
        table[int(np.dot(order, _CODE_WEIGHTS))] = slot_assignment(order)
    return table


_SLOT_TABLE = _slot_table()
_FACTORS = slice(COL.brightness, COL.hue + 1)  # JITTER_OPS order


def pack_rows(rows: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """``pack_image`` for a batch of ``param_row`` rows, vectorised.

    rows: float64 [n, views, param_row.WIDTH]; widths, heights: [n] image sizes.
    Returns float32 [n, views, LAYOUT.width], equal to
    ``pack_image([from_row(r) for r in rows[i]], widths[i], heights[i])`` for every i.
    """
    n, views = rows.shape[:2]
    out = np.empty((n, views, LAYOUT.width), dtype=np.float32)
    wid = np.asarray(widths, dtype=np.float64).reshape(n, 1)
    hgt = np.asarray(heights, dtype=np.float64).reshape(n, 1)
    top, left = rows[..., COL.top], rows[..., COL.left]
    out[..., LAYOUT.box] = top / hgt
    out[..., LAYOUT.box + 1] = left / wid
    out[..., LAYOUT.box + 2] = (top + rows[..., COL.height]) / hgt
    out[..., LAYOUT.box + 3] = (left + rows[..., COL.width]) / wid
    out[..., LAYOUT.flip] = rows[..., COL.flip]
    out[..., LAYOUT.slots:LAYOUT.slots + len(JITTER_SLOTS)] = _IDENTITY_ROW
    flat_rows, flat_out = rows.reshape(-1, rows.shape[-1]), out.reshape(-1, LAYOUT.width)
    jittered = np.flatnonzero(flat_rows[:, COL.jitter] != 0)
    if jittered.size:
        order = flat_rows[jittered, ORDER].astype(np.int64)  # [m, 4]
        slots = _SLOT_TABLE[order @ _CODE_WEIGHTS]
        if (slots < 0).any():
            raise ValueError("pack_rows: a jitter order column is not a permutation")
        factors = np.take_along_axis(flat_rows[jittered, _FACTORS], order, axis=1)
        flat_out[jittered[:, None], LAYOUT.slots + slots] = factors
    out[..., LAYOUT.gray] = rows[..., COL.grayscale]
    blurred = rows[..., COL.blur] != 0
    sigma = rows[..., COL.sigma]  # param_row keeps 1 when not blurred, as pack_view
    out[..., LAYOUT.sigma] = sigma
    window = 2.0 * np.ceil(3.0 * sigma) + 1.0  # blur_window, vectorised
    out[..., LAYOUT.window] = np.where(blurred, window, 1.0)
    out[..., LAYOUT.solarize] = rows[..., COL.solarize]
    return out
