"""The external-source callback that feeds the DALI graph, one batch at a time.

For batch ``t`` of epoch ``e`` on global rank ``r`` it returns the encoded images, their
views' crop boxes (for the graph) and parameter rows (for the photometric finish after it),
labels and sample ids of the samples ``plan.batch_indices(e, t)``, the epoch order every
backend uses (``pipelines.order``: a whole-dataset permutation per epoch from (seed, e),
strided by rank, padded by wrapping). Every view is drawn on the reference's streams
(``sample_rng(seed, r, e, index)``): one call of the compiled
``compiled_draw.draw_batch_rows`` per batch, boxed by ``boxes.view_boxes``, instead of
Python per sample (numpy Generators per view were most of the feed's CPU time per image,
which caps the host feed's rate). After the last batch it raises StopIteration, which ends
DALI's epoch.

A sample replaced because it is unreadable keeps the stream of the index it replaces and
takes the size of the image actually read.

It is a plain picklable object so that DALI can run it in worker processes
(``parallel=True``); each process computes an epoch's order once and keeps it.
"""
from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
from PIL import Image

from ..formats.jpeg_header import frame_size
from ..folder import DatasetError
from ..images import describe_error
from ..order import EpochPlan
from ..sampling.compiled_draw import batch_keys, draw_batch_rows, spec_arrays
from ..sampling.counter_stream import epoch_key
from ..signals import ignore_stop_signals
from ..spec import AugmentationSpec
from .boxes import view_boxes
from .readers import FolderDataset, ShardDataset

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 64


def jpeg_size(buf: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (``formats.jpeg_header.frame_size``: the
    marker walk, no decode); None when ``buf`` is not a JPEG or the walk fails (callers then
    ask PIL). Measured here: 8 us per image against 60 us for PIL's ``Image.open``, which
    matters at thousands of images/s."""
    return frame_size(buf)


def image_size(data: np.ndarray) -> tuple[int, int]:
    """(width, height) from the encoded header (no decode); raises on unreadable data."""
    size = jpeg_size(data[:65536].tobytes())
    if size is not None:
        return size
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return im.size


def looks_complete(data: np.ndarray) -> bool:
    """Cheap check that a JPEG or PNG ends with its end marker (truncation is the common
    corruption, and DALI's decoders stop the whole pipeline on it). False means "decode it
    to be sure", not "bad"."""
    tail = data[-16:].tobytes()
    if data[:2].tobytes() == b"\xff\xd8":
        return b"\xff\xd9" in tail
    if data[:4].tobytes() == b"\x89PNG":
        return b"IEND" in tail
    return False


def decode_problem(data: np.ndarray) -> str | None:
    """Why ``data`` does not decode fully with PIL, or None if it does (for error reports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data.tobytes())) as im:
                im.load()
    except Exception as e:  # hostile input raises many types
        return f"{type(e).__name__}: {e}"
    return None


class EpochFeed:
    """``callback(batch_info) -> (encoded, boxes, rows, meta[, used])`` for DALI's external
    source, one entry per sample of the batch:

    encoded: uint8 [num_bytes] arrays; boxes: float32 [B, num_views, 4] (``boxes.py``);
    rows: float64 [B, num_views, param_row.WIDTH] (``pipelines.sampling.param_row``);
    meta: int64 [2] each, (label, sample id): the sample id is the plan's dataset index,
    which the batch's rows stand for (one input for both keeps the graph's operator count);
    used (only ``with_index``): int64 [1] each, the dataset index actually read, which
    differs where a bad file was replaced.
    ``start_epoch`` is the loader epoch of DALI's epoch 0, which starts at batch
    ``first_batch`` (a pipeline rebuilt mid-epoch); ``bad`` holds dataset indices known not
    to decode, replaced like unreadable files.
    """

    def __init__(self, dataset: FolderDataset | ShardDataset, spec: AugmentationSpec,
                 plan: EpochPlan, start_epoch: int, with_index: bool = False,
                 first_batch: int = 0, bad: frozenset[int] = frozenset()) -> None:
        self.dataset, self.spec, self.plan = dataset, spec, plan
        self.start_epoch, self.with_index = start_epoch, with_index
        self.first_batch, self.bad = first_batch, bad
        self._arrays = spec_arrays(spec)
        self._order: tuple[int, np.ndarray] | None = None
        self._reported: set[int] = set()
        self._owner = os.getpid()  # a call from another pid runs in a DALI worker process

    def batch_indices(self, epoch: int, t: int) -> np.ndarray:
        """``plan.batch_indices`` with the epoch's order computed once per process."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.plan.order(epoch))
        b = self.plan.batch_size
        return self._order[1][t * b:(t + 1) * b]

    def _readable(self, index: int) -> tuple[np.ndarray, int, int, tuple[int, int]]:
        """(bytes, label, index actually used, size); an unreadable sample is replaced.

        As in the reference loader, sample i is replaced by the first of i+1, i+2, ...
        (mod n) that is readable, and each bad file is logged once per process. Files of an
        unverified dataset that do not end with their format's end marker are decoded with
        PIL first, because a truncated file would stop the DALI pipeline.
        """
        n = len(self.dataset)
        for k in range(min(MAX_REPLACEMENTS, n)):
            j = (index + k) % n
            try:
                if j in self.bad:
                    raise ValueError("does not decode (found by the DALI decoder)")
                data, label = self.dataset.read(j)
                size = image_size(data)
                if not self.dataset.verified and not looks_complete(data):
                    problem = decode_problem(data)
                    if problem is not None:
                        raise ValueError(problem)
                return data, label, j, size
            except DatasetError:
                raise
            except Exception as e:  # hostile files raise a zoo of types
                if j not in self._reported:
                    self._reported.add(j)
                    log.warning("cannot read %s (%s); using the next sample instead",
                                self.dataset.describe(j), describe_error(e))
        raise DatasetError(f"{MAX_REPLACEMENTS} consecutive samples failed to read, starting at "
                           f"{self.dataset.describe(index)}: is the dataset readable?")

    @property
    def num_outputs(self) -> int:
        return 5 if self.with_index else 4

    def read_batch(self, indices: np.ndarray) -> tuple[list, list, list, np.ndarray]:
        """Encoded bytes, labels and dataset indices actually used (int64 [1] each), and the
        sizes int64 [n, 2] (width, height) of the images read, for the samples ``indices``."""
        encoded, labels, used, sizes = [], [], [], []
        for index in indices:
            data, label, j, size = self._readable(int(index))
            encoded.append(data)
            sizes.append(size)
            labels.append(np.array([label], dtype=np.int64))
            used.append(np.array([j], dtype=np.int64))
        return encoded, labels, used, np.array(sizes, dtype=np.int64).reshape(len(sizes), 2)

    def draw_params(self, epoch: int, indices: np.ndarray, wh: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 [n, num_views, 4], rows float64 [n, num_views, param_row.WIDTH])
        drawn on the streams of ``indices`` (a replaced sample keeps its own) for the image
        sizes ``wh`` int64 [n, 2].

        One compiled draw for the whole batch; a method of its own so that
        ``benchmarks/data/feed.py`` can time this callback against the per-sample Python twin."""
        keys = batch_keys(np.uint64(epoch_key(self.plan.seed, self.plan.rank, epoch)),
                          np.asarray(indices, dtype=np.int64))
        rows = draw_batch_rows(keys, wh[:, 0], wh[:, 1], *self._arrays)
        return view_boxes(rows, wh[:, 0], wh[:, 1]), rows

    def __call__(self, batch_info) -> tuple[list, ...]:
        if self._owner != os.getpid():  # once per worker: SIGTERM is the trainer's to handle
            ignore_stop_signals()
            self._owner = os.getpid()
        epoch = self.start_epoch + batch_info.epoch_idx
        t = batch_info.iteration + (self.first_batch if batch_info.epoch_idx == 0 else 0)
        if t >= self.plan.batches_per_epoch:
            raise StopIteration
        indices = self.batch_indices(epoch, t)
        encoded, labels, used, wh = self.read_batch(indices)
        boxes, rows = self.draw_params(epoch, indices, wh)
        meta = [np.array([label[0], i], dtype=np.int64) for label, i in zip(labels, indices)]
        out = (encoded, boxes, rows, meta)
        return (*out, used) if self.with_index else out
