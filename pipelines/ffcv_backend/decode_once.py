"""The FFCV operation that decodes each image once and cuts every multi-crop view from it.

FFCV's stock image decoders each end one pipeline, so 12 views mean 12 pipelines and 12
decodes of the same JPEG. ``MultiCropDecoder`` is a single decoder for the image field: per
sample it decodes the JPEG once (FFCV's TurboJPEG binding; raw samples are read in place)
into a scratch buffer, draws every view's parameters into a float64 [views, param_row.WIDTH]
scratch (``compiled_draw.draw_image_rows``, the compiled twin of ``pipelines.sampling``),
and for every view resamples the row's crop box, flipped when the row says so (``resample``,
the spec's interpolation). Then, by ``finish``:
- True (the CPU executor): each crop goes through ``cpu_kernel.photometric_view`` with the
  photometric columns of the same rows, and the op writes finished, normalised float32 CHW
  views.
- False (the device finish): the op writes the uint8 crops AND the rows, so that the loader
  can finish the views elsewhere (``photometric.finish.finish_many`` on its device) with
  the very parameters the CPU finish applies.
Samples run in parallel (numba prange over FFCV's worker threads). Every parameter is the
one the reference and DALI executors draw for the same sample.

Output layout. FFCV gives a decoder one row of ``ViewLayout.row_entries`` per sample (uint8,
or float32 with ``finish``). The op writes the batch part-major instead; with ``n`` samples
in the batch:
- rows (``finish=False`` only): the first ``n * rows_entries`` bytes, float64
  ``[views, n, WIDTH]`` (view-major, as the crops);
- view ``v``: ``n * S_v * S_v * 3`` consecutive entries from ``n * offset[v]``, a
  ``[n, S_v, S_v, 3]`` (or ``[n, 3, S_v, S_v]``) array; consecutive views of one size thus
  form one ``[views * n, ...]`` array without a copy;
- ``n`` entries from ``n * counts_at`` counting JPEG decodes per sample (1 for JPEG, 0 for
  raw): the test hook proving one decode per image.
With ``finish=False`` a sample's row is padded to a multiple of 8 bytes, so the rows of
every FFCV batch slot start 8-byte aligned. ``ViewLayout.split`` undoes the layout.

Randomness: sample ``i``'s stream is ``sampling.sample_rng(seed, global rank, epoch, i)``'s,
key ``counter_stream.sample_key(seed, rank, epoch, i)``, derived in compiled code from the
epoch key. The epoch key lives in a small array the compiled code reads through its address
(FFCV's own ``cast_int_to_byte_ptr``), so a new epoch needs no recompilation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numba
import numpy as np
import torch
from ffcv.libffcv import ctypes_imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.utils import cast_int_to_byte_ptr

from ..sampling.compiled_draw import draw_image_rows, sample_key_nb, spec_arrays
from ..sampling.counter_stream import epoch_key
from ..sampling.param_row import COL, WIDTH
from ..photometric.cpu_kernel import kernel_consts, photometric_view, scratch_size
from ..spec import AugmentationSpec, size_runs
from .resample import filter_code, resize_crop

JPEG_MODE = 0  # ffcv.fields.rgb_image.IMAGE_MODES: 'jpg' -> 0, 'raw' -> 1
DECODE_FAILED = 255  # decode-count byte of a sample whose JPEG did not decode
ROW_ALIGN = 8  # bytes: a uint8 output row is padded to this, so float64 rows stay aligned
_TOP, _LEFT, _HEIGHT, _WIDTH, _FLIP = COL.top, COL.left, COL.height, COL.width, COL.flip


class Split(NamedTuple):
    """One batch of the op's output, by part (views of the flat output, no copies).

    groups: per run of same-size views (``ViewLayout.groups``) one ``[k * n, S, S, 3]``
        uint8 array (``[k * n, 3, S, S]`` float32 when planar), view-major;
    rows: float64 ``[views, n, WIDTH]`` parameter rows, None when planar;
    counts: JPEG decodes per sample, ``[n]``.
    """

    groups: list
    rows: object
    counts: object


@dataclass(frozen=True)
class ViewLayout:
    """Where each part of a batch lives in the op's output (see the module docstring).

    Sizes count entries: float32 values of finished CHW views when ``planar``, else bytes
    (uint8 HWC crops, the float64 rows as bytes); a view holds 3 * S * S entries either way.
    """

    sizes: tuple[int, ...]
    planar: bool = False

    @property
    def rows_entries(self) -> int:
        """Per sample: the bytes of its float64 [views, WIDTH] rows (0 when planar)."""
        return 0 if self.planar else len(self.sizes) * WIDTH * 8

    @property
    def view_entries(self) -> tuple[int, ...]:
        return tuple(s * s * 3 for s in self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Per-sample entry offset of each view (multiply by the batch size)."""
        out, acc = [], self.rows_entries
        for b in self.view_entries:
            out.append(acc)
            acc += b
        return tuple(out)

    @property
    def counts_at(self) -> int:
        """Per-sample entry offset of the decode counts: rows and views come before."""
        return self.rows_entries + sum(self.view_entries)

    @property
    def row_entries(self) -> int:
        """Entries per sample: rows, views and one decode-count entry, padded to a multiple
        of ROW_ALIGN bytes unless planar (float32 entries are aligned anyway)."""
        used = self.counts_at + 1
        return used if self.planar else -(-used // ROW_ALIGN) * ROW_ALIGN

    def groups(self) -> list[tuple[int, int, int]]:
        """Runs of consecutive views of one size: (first view, number of views, size)."""
        return size_runs(self.sizes)

    def split(self, flat, n: int) -> Split:
        """flat [n * row_entries] or at least its first ``n * counts_at`` entries (numpy or
        torch; the counts only when it reaches that far) -> ``Split``, views of ``flat``."""
        groups = []
        for first, k, s in self.groups():
            start = n * self.offsets[first]
            shape = (k * n, 3, s, s) if self.planar else (k * n, s, s, 3)
            groups.append(flat[start:start + k * n * s * s * 3].reshape(shape))
        rows = None
        if not self.planar:
            f64 = torch.float64 if isinstance(flat, torch.Tensor) else np.float64
            rows = flat[:n * self.rows_entries].view(f64).reshape(len(self.sizes), n, WIDTH)
        end = n * self.counts_at
        return Split(groups, rows, flat[end:end + n])


@numba.njit(nogil=True)
def decode_jpeg(data: np.ndarray, out: np.ndarray, height: int, width: int) -> int:
    """Decode JPEG bytes into out (uint8 [height * width * 3], RGB); 0 on success."""
    return ctypes_imdecode(data.ctypes.data, data.size, height, width, out.ctypes.data,
                           height, width, 0, 0, 1, 1, False, False)


@numba.njit(nogil=True, cache=True, fastmath=False)
def cut_views(image: np.ndarray, rows: np.ndarray, flat: np.ndarray, sample: int, n: int,
              sizes: np.ndarray, offsets: np.ndarray, kind: int) -> None:
    """Every view of one decoded image (uint8 [H, W, 3]) into the view-major batch ``flat``,
    box and flip from the sample's ``rows`` (float64 [views, param_row.WIDTH])."""
    for v in range(sizes.shape[0]):
        size = sizes[v]
        row = rows[v]
        start = n * offsets[v] + sample * size * size * 3
        dst = flat[start:start + size * size * 3].reshape(size, size, 3)
        resize_crop(image, int(row[_TOP]), int(row[_LEFT]), int(row[_HEIGHT]), int(row[_WIDTH]),
                    row[_FLIP] != 0.0, dst, kind)


@numba.njit(nogil=True, cache=True, fastmath=False)
def put_rows(rows: np.ndarray, flat: np.ndarray, sample: int, n: int) -> None:
    """One sample's rows (float64 [views, WIDTH]) into the rows part of the uint8 batch
    ``flat`` (float64 [views, n, WIDTH] from entry 0)."""
    views, width = rows.shape
    out = flat[:n * views * width * 8].view(np.float64).reshape(views, n, width)
    for v in range(views):
        out[v, sample, :] = rows[v]


@numba.njit(nogil=True, cache=True, fastmath=False)
def cut_and_finish(image: np.ndarray, rows: np.ndarray, flat: np.ndarray, sample: int, n: int,
                   sizes: np.ndarray, offsets: np.ndarray, kind: int, crop: np.ndarray,
                   scratch: np.ndarray, norm: np.ndarray, solarize_at: float) -> None:
    """``cut_views``, then each crop's photometric ops and normalisation
    (``cpu_kernel.photometric_view``) into the planar float32 batch ``flat``.
    crop: uint8 scratch of the largest view; scratch: the kernel's float32 scratch."""
    for v in range(sizes.shape[0]):
        size = sizes[v]
        row = rows[v]
        rgb = crop[:size * size * 3].reshape(size, size, 3)
        resize_crop(image, int(row[_TOP]), int(row[_LEFT]), int(row[_HEIGHT]), int(row[_WIDTH]),
                    row[_FLIP] != 0.0, rgb, kind)
        start = n * offsets[v] + sample * size * size * 3
        dst = flat[start:start + size * size * 3].reshape(3, size, size)
        photometric_view(rgb, row, norm, solarize_at, dst, scratch)


class MultiCropDecoder(Operation):
    """Decode once, cut all views of ``spec`` (see the module docstring).

    seed, rank: base seed and GLOBAL rank of the streams; ``set_epoch`` moves them on.
    finish: also run each view's photometric ops and normalisation in the op (the CPU
    executor): the output is then planar float32 views; else uint8 crops and the views'
    parameter rows, for a finish after the op (``ViewLayout``).
    """

    def __init__(self, spec: AugmentationSpec, seed: int, rank: int, finish: bool = False
                 ) -> None:
        super().__init__()
        self.spec, self.seed, self.rank, self.finish = spec, seed, rank, finish
        self.layout = ViewLayout(tuple(v.size for v in spec.views()), planar=finish)
        self._epoch_key = np.zeros(1, dtype=np.uint64)  # read by the compiled code
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Switch the streams to ``epoch``; call only while no batch is being decoded."""
        self._epoch_key[0] = np.uint64(epoch_key(self.seed, self.rank, epoch))

    def sample_rows(self, index: int, width: int, height: int) -> np.ndarray:
        """The rows the op draws for dataset sample ``index`` (a ``width`` x ``height``
        image) in the current epoch: float64 [views, param_row.WIDTH]. Same compiled calls
        and key derivation as the op's loop; tests compare them with the reference's draw."""
        rows = np.empty((self.spec.num_views, WIDTH), dtype=np.float64)
        arrays = spec_arrays(self.spec)
        key = np.uint64(sample_key_nb(self._epoch_key[0], np.int64(index)))  # boxed as an int
        draw_image_rows(key, np.int64(width), np.int64(height), arrays.views, arrays.common,
                        rows)
        return rows

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple]:
        heights, widths = self.metadata["height"], self.metadata["width"]
        largest = int(heights.max()) * int(widths.max()) * 3
        row = (self.layout.row_entries,)
        dtype = np.dtype("<f4") if self.finish else np.dtype("<u1")
        uint8 = np.dtype("<u1")
        params = AllocationQuery((self.spec.num_views, WIDTH), np.dtype("<f8"))
        memory = [AllocationQuery(row, dtype), AllocationQuery((largest,), uint8), params]
        if self.finish:  # per sample: a uint8 crop and the photometric kernel's scratch
            size = max(self.layout.sizes)
            memory += [AllocationQuery((size * size * 3,), uint8),
                       AllocationQuery((scratch_size(size, kernel_consts(self.spec).max_radius),),
                                       np.dtype("<f4"))]
        return replace(previous_state, jit_mode=True, shape=row, dtype=dtype), tuple(memory)

    def generate_code(self):
        mem_read = self.memory_read
        loop = Compiler.get_iterator()
        spec, layout, finish = self.spec, self.layout, self.finish
        sizes = np.array(layout.sizes, dtype=np.int64)
        offsets = np.array(layout.offsets, dtype=np.int64)
        view_arr, common = spec_arrays(spec)
        consts = kernel_consts(spec)
        norm, solarize_at = consts.norm, float(consts.solarize_at)
        kind = filter_code(spec.interpolation)
        counts_at = layout.counts_at
        key_address = self._epoch_key.ctypes.data
        jpeg = JPEG_MODE

        if finish:
            @numba.njit(nogil=True, fastmath=False)  # explicit: FFCV's fastmath would leak in
            def views(image, rows, buffers, i, flat, n):
                cut_and_finish(image, rows, flat, i, n, sizes, offsets, kind, buffers[3][i],
                             buffers[4][i], norm, solarize_at)
        else:
            @numba.njit(nogil=True, fastmath=False)  # explicit: FFCV's fastmath would leak in
            def views(image, rows, buffers, i, flat, n):
                cut_views(image, rows, flat, i, n, sizes, offsets, kind)
                put_rows(rows, flat, i, n)

        def decode_multi_crop(batch_indices, buffers, metadata, storage_state):
            out, scratch, params = buffers[0], buffers[1], buffers[2]
            n = len(batch_indices)
            flat = out.reshape(-1)
            epoch = numba.carray(cast_int_to_byte_ptr(key_address), (8,)).view(np.uint64)[0]
            for i in loop(n):
                index = batch_indices[i]
                field = metadata[index]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                rows = params[i]  # this sample's views, float64 [views, WIDTH]
                draw_image_rows(sample_key_nb(epoch, index), width, height, view_arr, common,
                                rows)
                if field["mode"] == jpeg:
                    pixels = scratch[i, :height * width * 3]
                    status = decode_jpeg(data, pixels, height, width)
                    flat[n * counts_at + i] = 1 if status == 0 else DECODE_FAILED
                    views(pixels.reshape(height, width, 3), rows, buffers, i, flat, n)
                else:  # raw pixels, read in place
                    flat[n * counts_at + i] = 0
                    views(data.reshape(height, width, 3), rows, buffers, i, flat, n)
            return out[:n]

        decode_multi_crop.is_parallel = True
        return decode_multi_crop
