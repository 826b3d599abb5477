"""``build_ffcv_loader``: the FFCV executor behind ``build_loader(..., backend="ffcv")``.

Flow per batch: FFCV reads the .beton (os page cache or its process cache) -> the compiled
``MultiCropDecoder`` decodes each image once and cuts every view, laid out view-major. Then
one of two finishes (``FFCVOptions.photometric``):
- compiled (the CPU default): the op itself runs each view's photometric ops and
  normalisation (``pipelines.photometric.cpu_kernel``) with the parameters of the sample's own
  stream, the very parameters the reference executor draws, in FFCV's worker threads; here
  each run of same-size views is one finished ``[k * B, 3, S, S]`` float32 array, copied out
  of FFCV's reused buffer.
- tensor (the GPU default): the op writes uint8 crops; here each run of same-size views
  becomes one ``[k * B, S, S, 3]`` tensor, goes to the device and gets the photometric ops
  as batched tensor ops (``pipelines.photometric.torch_ops``), parameters drawn there per batch.

Sharding: no process group is needed. Each rank gets its own equal-length, disjoint slice
of a per-epoch global order through a custom FFCV traversal order (``order.py``); the
augmentation streams are seeded by (seed, GLOBAL rank, epoch, sample). ``set_epoch(e)``
switches both; nothing is recompiled.

Threads: FFCV runs the decoder in a background thread with ``num_workers`` numba threads,
and sets torch's intra-op thread count to ``num_workers`` too (process-wide).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.reader import Reader
from ffcv.traversal_order.base import TraversalOrder

from ..convert.common import Manifest
from ..folder import DatasetError
from ..spec import AugmentationSpec
from ..photometric.torch_ops import PhotometricOps
from . import reader_fix
from .decode_once import DECODE_FAILED, MultiCropDecoder
from .order import ORDERS, epoch_order, rank_slice

reader_fix.apply()  # before any FFCV Loader exists: see reader_fix.py

IMAGE_FIELD, LABEL_FIELD = "image", "label"


@dataclass(frozen=True)
class FFCVOptions:
    """Backend options (``build_loader(..., backend="ffcv", **options)``).

    order: "random", "quasi_random" or "sequential" (build_ffcv_loader's default: random
        when shuffling, else sequential); block, window: quasi_random's sizes (order.py).
    os_cache: read through the OS page cache (True) or FFCV's process cache (False, for
        datasets larger than RAM).
    batches_ahead: batches FFCV decodes ahead of the consumer.
    photometric: where the photometric ops run. "compiled": inside the decode op, per view,
        with the parameters of the sample's stream (``cpu_kernel``; CPU only);
        "tensor": batched tensor ops on the device after the op (``torch_ops``, parameters
        from a per-batch torch generator); "auto": compiled on the CPU, tensor on a GPU.
    """

    order: str = "random"
    photometric: str = "auto"
    os_cache: bool = True
    batches_ahead: int = 2
    block: int = 256
    window: int = 8


class RankSliceOrder(TraversalOrder):
    """FFCV traversal order: this rank's slice of the epoch's global order (order.py).

    FFCV instantiates an order object as ``order(loader)``; an instance of this class is
    passed and returns itself bound to the loader.
    """

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int, order: str,
                 block: int, window: int) -> None:
        self.num_samples, self.seed, self.order = num_samples, seed, order
        self.rank, self.world_size, self.block, self.window = rank, world_size, block, window

    def __call__(self, loader: Loader) -> "RankSliceOrder":
        self.loader = loader
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        order = epoch_order(self.num_samples, epoch, self.seed, self.order, self.block,
                            self.window)
        return rank_slice(order, self.rank, self.world_size)


def resolve_beton(data: str | Path) -> tuple[Path, Manifest]:
    """The .beton behind ``data`` (the file, or a folder holding one) and its manifest."""
    path = Path(data)
    if not path.exists():
        raise DatasetError(f"FFCV dataset not found: {path}")
    if path.is_dir():
        betons = sorted(path.glob("*.beton"))
        if len(betons) != 1:
            raise DatasetError(f"{path} must hold exactly one .beton file, found "
                               f"{len(betons)} (convert with: dino-convert --format ffcv)")
        path = betons[0]
    elif path.suffix != ".beton":
        raise DatasetError(f"{path} is not a .beton file (convert with: dino-convert "
                           "--format ffcv)")
    try:
        manifest = Manifest.load(path.with_name("manifest.json"))
    except (FileNotFoundError, ValueError) as e:
        raise DatasetError(str(e)) from None
    if manifest.format != "ffcv" or path.name not in {s.get("name") for s in manifest.shards}:
        raise DatasetError(f"{path.with_name('manifest.json')} does not describe {path.name} "
                           "(a conversion that did not finish, or another dataset)")
    return path, manifest


def _check_fields(path: Path) -> int:
    """Number of samples, after checking the file holds an image and a label field."""
    try:
        reader = Reader(str(path))
    except Exception as e:  # a truncated or foreign file fails in many ways inside FFCV
        raise DatasetError(f"{path} is not a readable .beton ({type(e).__name__}: {e})") from None
    fields = reader.handlers
    if not (isinstance(fields.get(IMAGE_FIELD), RGBImageField)
            and isinstance(fields.get(LABEL_FIELD), IntField)):
        raise DatasetError(f"{path} must have fields '{IMAGE_FIELD}' (RGB image) and "
                           f"'{LABEL_FIELD}' (int); it has {sorted(fields)}")
    return int(reader.num_samples)


def _batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """Seed of the photometric generator of one batch."""
    state = np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


class FFCVMultiCropLoader:
    """The FFCV executor; honours ``pipelines.loader.MultiCropLoader``.

    ``last_decode_counts`` (uint8 [B]) holds, after each batch, how many JPEG decodes each
    sample of that batch took: 1 for JPEG samples, 0 for raw ones.
    """

    def __init__(self, path: Path, manifest: Manifest, batch_size: int, spec: AugmentationSpec,
                 device: torch.device, num_workers: int, seed: int, rank: int,
                 world_size: int, drop_last: bool, options: FFCVOptions) -> None:
        self.path, self.spec, self.device = path, spec, device
        self.seed, self.rank, self.batch_size = seed, rank, batch_size
        self.classes = list(manifest.classes)
        self.num_samples = _check_fields(path)
        if self.num_samples < world_size:
            raise DatasetError(f"{path} has {self.num_samples} samples, fewer than the "
                               f"{world_size} ranks")
        self.order = RankSliceOrder(self.num_samples, seed, rank, world_size, options.order,
                                    options.block, options.window)
        self.compiled = options.photometric == "compiled" or (
            options.photometric == "auto" and device.type == "cpu")
        if self.compiled and device.type != "cpu":
            raise ValueError("ffcv option photometric='compiled' runs on the CPU; use 'tensor' "
                             f"(or 'auto') for device {device}")
        self.decoder = MultiCropDecoder(spec, seed, rank, finish=self.compiled)
        self._loader = Loader(
            str(path), batch_size=batch_size, num_workers=num_workers,
            os_cache=options.os_cache, order=self.order, drop_last=drop_last,
            batches_ahead=options.batches_ahead,
            pipelines={IMAGE_FIELD: PipelineSpec(IMAGE_FIELD, decoder=self.decoder),
                       LABEL_FIELD: PipelineSpec(LABEL_FIELD, decoder=IntDecoder())})
        outputs = list(self._loader.pipeline_specs)
        self._image_at, self._label_at = outputs.index(IMAGE_FIELD), outputs.index(LABEL_FIELD)
        self.ops = PhotometricOps(spec, device)
        self._generator = torch.Generator(device=device)
        self._views = spec.views()
        self._epoch = 0
        self._running = None
        self.last_decode_counts: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def sample_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices this rank visits in ``epoch``, in order."""
        return self.order.sample_order(epoch)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self.close()
        epoch = self._epoch
        self.decoder.set_epoch(epoch)  # safe: no epoch iterator is running
        self._loader.next_epoch = epoch
        running = self._running = iter(self._loader)
        try:
            for batch in range(len(self._loader)):
                self._wait_for_batch(running)
                outputs = next(running)
                yield self._assemble(outputs[self._image_at], outputs[self._label_at],
                                     epoch, batch)
        finally:
            running.close()
            if self._running is running:
                self._running = None

    def _wait_for_batch(self, running) -> None:
        """Wait for FFCV's epoch thread to queue a batch; raise if it died (FFCV would wait
        forever: an exception in its thread is only printed)."""
        queue = running.output_queue
        while queue.empty():
            if not running.is_alive():
                raise RuntimeError(f"FFCV's decoding thread for {self.path} stopped without "
                                   "finishing the epoch; its error is printed above")
            with queue.not_empty:
                queue.not_empty.wait(timeout=0.05)

    def _assemble(self, rows: np.ndarray, labels: np.ndarray, epoch: int, batch: int
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Decoder rows [n, row_entries] + labels [n, 1] -> (views, labels) on the device."""
        n = rows.shape[0]
        groups, counts = self.decoder.layout.split(torch.from_numpy(rows).view(-1), n)
        self.last_decode_counts = counts.to(torch.uint8, copy=True)
        if bool((counts == DECODE_FAILED).any()):  # host tensor: no device sync
            first = int((counts == DECODE_FAILED).nonzero()[0, 0])
            index = self.sample_indices(epoch)[batch * self.batch_size + first]
            raise DatasetError(f"{self.path}: the JPEG of sample {index} does not decode "
                               "(corrupt .beton? convert again)")
        views: list[torch.Tensor] = []
        if self.compiled:  # finished float32 views in FFCV's reused buffer: copy them out
            for finished in groups:
                views.extend(finished.to(self.ops.dtype, copy=True).split(n))
        else:
            self._generator.manual_seed(_batch_seed(self.seed, self.rank, epoch, batch))
            for (first, k, _), images in zip(self.decoder.layout.groups(), groups):
                out = self.ops(images, self._views[first:first + k], self._generator)
                views.extend(out.split(n))
        labels = torch.from_numpy(labels).view(-1).to(self.device, torch.int64, non_blocking=True)
        return views, labels

    def close(self) -> None:
        """Stop the running epoch's decoding thread, if any."""
        running, self._running = self._running, None
        if running is not None:
            running.close()


def build_ffcv_loader(data: str | Path, batch_size: int, spec: AugmentationSpec,
                      device: str | torch.device, num_workers: int, seed: int, rank: int,
                      world_size: int, shuffle: bool, drop_last: bool, **opts
                      ) -> FFCVMultiCropLoader:
    """The FFCV executor over a converted dataset (a .beton, or its folder).

    opts: the fields of ``FFCVOptions``. ``shuffle=False`` means the sequential order
    unless ``order`` says otherwise.
    """
    unknown = sorted(set(opts) - set(FFCVOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown ffcv backend option(s) {unknown}; known: "
                        f"{sorted(FFCVOptions.__dataclass_fields__)}")
    options = FFCVOptions(**{"order": "random" if shuffle else "sequential", **opts})
    if options.order not in ORDERS:
        raise ValueError(f"ffcv option order={options.order!r}: choose from {', '.join(ORDERS)}")
    if options.photometric not in ("auto", "compiled", "tensor"):
        raise ValueError(f"ffcv option photometric={options.photometric!r}: choose from auto, "
                         "compiled, tensor")
    if options.batches_ahead < 1:
        raise ValueError(f"ffcv option batches_ahead must be >= 1, got {options.batches_ahead}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    path, manifest = resolve_beton(data)
    return FFCVMultiCropLoader(path, manifest, batch_size, spec, device, max(1, num_workers),
                               seed, rank, world_size, drop_last, options)
