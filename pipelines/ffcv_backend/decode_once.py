"""The FFCV operation that decodes each image once and cuts every multi-crop view from it.

FFCV's stock image decoders each end one pipeline, so 12 views mean 12 pipelines and 12
decodes of the same JPEG. ``MultiCropDecoder`` is a single decoder for the image field: per
sample it decodes the JPEG once (FFCV's TurboJPEG binding; raw samples are read in place)
into a scratch buffer, then for every view of the spec draws a random resized crop box and a
flip (``crop_random``) and resamples the crop into the output (``resample``, the spec's
interpolation). Samples run in parallel (numba prange over FFCV's worker threads).

Output layout. FFCV gives a decoder one uint8 row of ``ViewLayout.row_bytes`` per sample.
The op writes the batch view-major instead: with ``n`` samples in the batch, view ``v``
occupies ``n * S_v * S_v * 3`` consecutive bytes starting at ``n * offset[v]``, as a
``[n, S_v, S_v, 3]`` array; consecutive views of one size thus form one
``[views * n, S, S, 3]`` array, ready for batched tensor ops without a copy. The last ``n``
bytes count JPEG decodes per sample (1 for JPEG, 0 for raw): the test hook proving one decode
per image. ``ViewLayout.split`` undoes the layout.

Randomness: sample ``i``'s stream key hashes (seed, global rank, epoch, i). The epoch key
lives in a small array the compiled code reads through its address (FFCV's own
``cast_int_to_byte_ptr``), so a new epoch needs no recompilation.
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

from ..spec import AugmentationSpec
from .crop_random import FLIP_SLOT, VIEW_STRIDE, crop_box, epoch_key, splitmix64_nb, unit_nb
from .resample import filter_code, resize_crop

JPEG_MODE = 0  # ffcv.fields.rgb_image.IMAGE_MODES: 'jpg' -> 0, 'raw' -> 1
DECODE_FAILED = 255  # decode-count byte of a sample whose JPEG did not decode


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
def cut_views(image: np.ndarray, key: np.uint64, flat: np.ndarray, sample: int, n: int,
              sizes: np.ndarray, offsets: np.ndarray, scales: np.ndarray, ratio_lo: float,
              ratio_hi: float, flip_p: float, kind: int) -> None:
    """Every view of one decoded image (uint8 [H, W, 3]) into the view-major batch ``flat``."""
    height, width = image.shape[0], image.shape[1]
    for v in range(sizes.shape[0]):
        size = sizes[v]
        base = v * VIEW_STRIDE
        top, left, h, w = crop_box(width, height, scales[v, 0], scales[v, 1], ratio_lo,
                                   ratio_hi, key, base)
        flip = unit_nb(key, base + FLIP_SLOT) < flip_p
        start = n * offsets[v] + sample * size * size * 3
        dst = flat[start:start + size * size * 3].reshape(size, size, 3)
        resize_crop(image, top, left, h, w, flip, dst, kind)


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

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple]:
        heights, widths = self.metadata["height"], self.metadata["width"]
        largest = int(heights.max()) * int(widths.max()) * 3
        row = (self.layout.row_bytes,)
        uint8 = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=row, dtype=uint8),
                (AllocationQuery(row, uint8), AllocationQuery((largest,), uint8)))

    def generate_code(self):
        mem_read = self.memory_read
        loop = Compiler.get_iterator()
        spec, layout = self.spec, self.layout
        views = spec.views()
        sizes = np.array(layout.sizes, dtype=np.int64)
        offsets = np.array(layout.offsets, dtype=np.int64)
        scales = np.array([v.scale for v in views], dtype=np.float64)
        ratio_lo, ratio_hi = float(spec.ratio[0]), float(spec.ratio[1])
        flip_p, kind = float(spec.flip_p), filter_code(spec.interpolation)
        counts_at = layout.row_bytes - 1
        key_address = self._epoch_key.ctypes.data
        jpeg = JPEG_MODE

        def decode_multi_crop(batch_indices, buffers, metadata, storage_state):
            out, scratch = buffers
            n = len(batch_indices)
            flat = out.reshape(-1)
            epoch = numba.carray(cast_int_to_byte_ptr(key_address), (8,)).view(np.uint64)[0]
            for i in loop(n):
                index = batch_indices[i]
                field = metadata[index]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                key = splitmix64_nb(epoch ^ np.uint64(index))
                if field["mode"] == jpeg:
                    pixels = scratch[i, :height * width * 3]
                    status = decode_jpeg(data, pixels, height, width)
                    flat[n * counts_at + i] = 1 if status == 0 else DECODE_FAILED
                    cut_views(pixels.reshape(height, width, 3), key, flat, i, n, sizes, offsets,
                              scales, ratio_lo, ratio_hi, flip_p, kind)
                else:  # raw pixels, read in place
                    flat[n * counts_at + i] = 0
                    cut_views(data.reshape(height, width, 3), key, flat, i, n, sizes, offsets,
                              scales, ratio_lo, ratio_hi, flip_p, kind)
            return out[:n]

        decode_multi_crop.is_parallel = True
        return decode_multi_crop
