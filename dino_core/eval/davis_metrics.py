"""DAVIS region similarity J and boundary accuracy F, our own implementation of the protocol.

The protocol (Perazzi et al. 2016; Pont-Tuset et al. 2017, semi-supervised track), as facts:

- Every object id k = 1..K of the first frame's annotation is scored on its own binary masks
  (prediction == k against annotation == k). Pixels labelled 255 in the annotation are void:
  left out of both measures.
- J is the intersection over union; when both masks are empty it is 1.
- F is the F-measure of boundary precision and recall: a boundary pixel counts as matched
  when a boundary pixel of the other mask lies within a disk of radius
  ceil(0.008 * image diagonal) pixels. The boundary of a mask is the set of pixels whose
  value differs from their right, lower or lower-right neighbour (half a pixel towards the
  origin from the true edge), the last row comparing only to the right, the last column
  only downwards. An empty predicted boundary against a non-empty true one has precision 1
  and recall 0 (F 0); the reverse precision 0, recall 1; both empty: F 1.
- The first frame (given) and the last frame are not scored. Per object the mean over its
  frames is taken (``J-Mean``, ``F-Mean``: means over all objects of all sequences); ``J&F``
  is their average. Recall is the share of frames above 0.5.

The boundary dilation is a convolution with the disk (``dilate``); ``dilate_reference`` is its
obviously-correct twin (a shifted OR per disk offset), tested against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

VOID_LABEL = 255
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of two boolean masks [H, W] (void pixels [H, W] ignored): IoU, 1 when both empty."""
    keep = ~void if void is not None else np.ones_like(gt, dtype=bool)
    inter = np.count_nonzero(pred & gt & keep)
    union = np.count_nonzero((pred | gt) & keep)
    return 1.0 if union == 0 else inter / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Boolean boundary [H, W] of a boolean mask [H, W] (the DAVIS convention, see module)."""
    right = np.zeros_like(mask)
    below = np.zeros_like(mask)
    diag = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    diag[:-1, :-1] = mask[1:, 1:]
    edge = (mask ^ right) | (mask ^ below) | (mask ^ diag)
    edge[-1, :] = mask[-1, :] ^ right[-1, :]
    edge[:, -1] = mask[:, -1] ^ below[:, -1]
    edge[-1, -1] = False
    return edge


def tolerance_pixels(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Disk radius in pixels: ceil(tolerance * diagonal), or ``tolerance`` itself when >= 1."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(*shape)))


def disk(radius: int) -> np.ndarray:
    """Boolean [2r+1, 2r+1] disk: offsets (dy, dx) with dy^2 + dx^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Dilate boolean masks [..., H, W] by the disk of ``radius`` (one conv2d for all)."""
    if radius == 0:
        return masks.copy()
    shape = masks.shape
    x = torch.from_numpy(masks.reshape(-1, 1, *shape[-2:]).astype(np.float32))
    kernel = torch.from_numpy(disk(radius).astype(np.float32))[None, None]
    hits = F.conv2d(x, kernel, padding=radius)           # (N, 1, H, W): disk pixels covered
    return (hits > 0.5).numpy().reshape(shape)


def dilate_reference(mask: np.ndarray, radius: int) -> np.ndarray:
    """The twin of ``dilate`` for one mask [H, W]: OR of the mask shifted by every offset."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy, dx in zip(*np.nonzero(disk(radius))):
        dy, dx = int(dy) - radius, int(dx) - radius
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
            mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def boundary_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                     tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F of two boolean masks [H, W]: boundary F-measure within the tolerance disk."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0  # precision or recall is 0 when only one is empty
    radius = tolerance_pixels(gt.shape, tolerance)
    pred_d, gt_d = dilate(np.stack((pred_b, gt_b)), radius)
    precision = np.count_nonzero(pred_b & gt_d) / n_pred
    recall = np.count_nonzero(gt_b & pred_d) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class SequenceScores:
    """Per-frame scores of one sequence: j and f are [objects, scored frames] float64."""

    name: str
    j: np.ndarray
    f: np.ndarray


def score_sequence(name: str, pred: np.ndarray, gt: np.ndarray,
                   tolerance: float = BOUNDARY_TOLERANCE) -> SequenceScores:
    """Score label maps pred [T, H, W] against annotations gt [T, H, W] (uint8).

    Objects are 1..max id of gt[0] (void excluded); frames 1..T-2 are scored (the first is
    given, the last is left out, as the DAVIS semi-supervised evaluation does).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"sequence {name}: predictions {pred.shape} and annotations "
                         f"{gt.shape} differ in shape")
    first = gt[0][gt[0] != VOID_LABEL]
    n_objects = int(first.max()) if first.size else 0
    frames = range(1, gt.shape[0] - 1)
    j = np.zeros((n_objects, len(frames)))
    f = np.zeros((n_objects, len(frames)))
    for col, t in enumerate(frames):
        void = gt[t] == VOID_LABEL
        for k in range(1, n_objects + 1):
            p, g = pred[t] == k, gt[t] == k
            j[k - 1, col] = region_similarity(p, g, void)
            f[k - 1, col] = boundary_measure(p, g, void, tolerance)
    return SequenceScores(name, j, f)


@dataclass(frozen=True)
class DavisSummary:
    """Means over every object of every sequence (fractions in [0, 1])."""

    j_mean: float
    f_mean: float
    j_recall: float
    f_recall: float
    objects: int
    sequences: int

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


def summarise(scores: list[SequenceScores]) -> DavisSummary:
    """J/F mean and recall over all objects: per object the mean over its frames first."""
    per_object = [(j_row, f_row) for s in scores for j_row, f_row in zip(s.j, s.f)
                  if j_row.size]
    if not per_object:
        raise ValueError("no object has a scored frame (sequences need >= 3 annotated frames)")
    j_rows, f_rows = zip(*per_object)
    return DavisSummary(j_mean=float(np.mean([r.mean() for r in j_rows])),
                        f_mean=float(np.mean([r.mean() for r in f_rows])),
                        j_recall=float(np.mean([(r > 0.5).mean() for r in j_rows])),
                        f_recall=float(np.mean([(r > 0.5).mean() for r in f_rows])),
                        objects=len(per_object), sequences=len(scores))
