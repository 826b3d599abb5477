"""The FFCV operation that decodes each image once and cuts every multi-crop view from it.

FFCV's stock image decoders each end one pipeline, so 12 views mean 12 pipelines and 12
decodes of the same JPEG. ``MultiCropDecoder`` is a single decoder for the image field: per
sample it decodes the JPEG once (FFCV's TurboJPEG binding; raw samples are read in place)
into a scratch buffer, draws every view's parameters into a float64 [views, param_row.WIDTH]
scratch (``counter_sampling.draw_image_rows``, the compiled twin of ``pipelines.sampling``),
and for every view resamples the row's crop box, flipped when the row says so, into the
output (``resample``, the spec's interpolation). Samples run in parallel (numba prange over
FFCV's worker threads). The photometric columns of the rows are not used here yet (the
batched tensor ops draw their own); they are drawn so that the stream, and hence every
box, is the one the reference and DALI executors draw for the same sample.

Output layout. FFCV gives a decoder one uint8 row of ``ViewLayout.row_bytes`` per sample.
The op writes the batch view-major instead: with ``n`` samples in the batch, view ``v``
occupies ``n * S_v * S_v * 3`` consecutive bytes starting at ``n * offset[v]``, as a
``[n, S_v, S_v, 3]`` array; consecutive views of one size thus form one
``[views * n, S, S, 3]`` array, ready for batched tensor ops without a copy. The last ``n``
bytes count JPEG decodes per sample (1 for JPEG, 0 for raw): the test hook proving one decode
per image. ``ViewLayout.split`` undoes the layout.

Randomness: sample ``i``'s stream is ``sampling.sample_rng(seed, global rank, epoch, i)``'s,
key ``counter_stream.sample_key(seed, rank, epoch, i)``, derived in compiled code from the
epoch key. The epoch key lives in a small array the compiled code reads through its address
(FFCV's own ``cast_int_to_byte_ptr``), so a new epoch needs no recompilation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numba
import numpy as np
from ffcv.libffcv import ctypes_imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.utils import cast_int_to_byte_ptr

from ..counter_sampling import draw_image_rows, sample_key_nb, spec_arrays
from ..counter_stream import epoch_key
from ..param_row import COL, WIDTH
from ..spec import AugmentationSpec
from .resample import filter_code, resize_crop

JPEG_MODE = 0  # ffcv.fields.rgb_image.IMAGE_MODES: 'jpg' -> 0, 'raw' -> 1
DECODE_FAILED = 255  # decode-count byte of a sample whose JPEG did not decode
_TOP, _LEFT, _HEIGHT, _WIDTH, _FLIP = COL.top, COL.left, COL.height, COL.width, COL.flip


@dataclass(frozen=True)
class ViewLayout:
    """Where each view lives in the op's output (see the module docstring)."""

    sizes: tuple[int, ...]

    @property
    def view_bytes(self) -> tuple[int, ...]:
        return tuple(s * s * 3 for s in self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Per-sample byte offset of each view (multiply by the batch size)."""
        out, acc = [], 0
        for b in self.view_bytes:
            out.append(acc)
            acc += b
        return tuple(out)

    @property
    def row_bytes(self) -> int:
        """Bytes per sample: every view plus one decode-count byte."""
        return sum(self.view_bytes) + 1

    def groups(self) -> list[tuple[int, int, int]]:
        """Runs of consecutive views of one size: (first view, number of views, size)."""
        runs: list[tuple[int, int, int]] = []
        for v, s in enumerate(self.sizes):
            if runs and runs[-1][2] == s:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, s)
            else:
                runs.append((v, 1, s))
        return runs

    def split(self, flat, n: int) -> tuple[list, object]:
        """flat uint8 [n * row_bytes] (numpy or torch) -> ([one [k * n, S, S, 3] per group],
        decode counts [n]), all views of ``flat``."""
        arrays = []
        for first, k, s in self.groups():
            start = n * self.offsets[first]
            arrays.append(flat[start:start + k * n * s * s * 3].reshape(k * n, s, s, 3))
        end = n * (self.row_bytes - 1)
        return arrays, flat[end:end + n]


@numba.njit(nogil=True)
def decode_jpeg(data: np.ndarray, out: np.ndarray, height: int, width: int) -> int:
    """Decode JPEG bytes into out (uint8 [height * width * 3], RGB); 0 on success."""
    return ctypes_imdecode(data.ctypes.data, data.size, height, width, out.ctypes.data,
                           height, width, 0, 0, 1, 1, False, False)


@numba.njit(nogil=True, cache=True)
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


class MultiCropDecoder(Operation):
    """Decode once, cut all views of ``spec`` (see the module docstring).

    seed, rank: base seed and GLOBAL rank of the streams; ``set_epoch`` moves them on.
    """

    def __init__(self, spec: AugmentationSpec, seed: int, rank: int) -> None:
        super().__init__()
        self.spec, self.seed, self.rank = spec, seed, rank
        self.layout = ViewLayout(tuple(v.size for v in spec.views()))
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
        row = (self.layout.row_bytes,)
        uint8 = np.dtype("<u1")
        params = AllocationQuery((self.spec.num_views, WIDTH), np.dtype("<f8"))
        return (replace(previous_state, jit_mode=True, shape=row, dtype=uint8),
                (AllocationQuery(row, uint8), AllocationQuery((largest,), uint8), params))

    def generate_code(self):
        mem_read = self.memory_read
        loop = Compiler.get_iterator()
        spec, layout = self.spec, self.layout
        sizes = np.array(layout.sizes, dtype=np.int64)
        offsets = np.array(layout.offsets, dtype=np.int64)
        view_arr, common = spec_arrays(spec)
        kind = filter_code(spec.interpolation)
        counts_at = layout.row_bytes - 1
        key_address = self._epoch_key.ctypes.data
        jpeg = JPEG_MODE

        def decode_multi_crop(batch_indices, buffers, metadata, storage_state):
            out, scratch, params = buffers
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
                    cut_views(pixels.reshape(height, width, 3), rows, flat, i, n, sizes,
                              offsets, kind)
                else:  # raw pixels, read in place
                    flat[n * counts_at + i] = 0
                    cut_views(data.reshape(height, width, 3), rows, flat, i, n, sizes, offsets,
                              kind)
            return out[:n]

        decode_multi_crop.is_parallel = True
        return decode_multi_crop
