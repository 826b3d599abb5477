"""``build_ffcv_loader``: the FFCV executor behind ``build_loader(..., backend="ffcv")``.

Flow per batch: FFCV reads the .beton (os page cache or its process cache) -> the compiled
``MultiCropDecoder`` decodes each image once and cuts every view, laid out view-major, in
one of FFCV's rotating batch buffers. Then one of two finishes (``FFCVOptions.photometric``),
both with the parameters of the sample's own counter stream, the very parameters the
reference executor draws:
- compiled (the CPU default): the op itself runs each view's photometric ops and
  normalisation (``pipelines.photometric.cpu_kernel``) in FFCV's worker threads; here each
  run of same-size views is one finished ``[k * B, 3, S, S]`` float32 array, copied out of
  FFCV's buffer.
- device (the GPU default): the op writes uint8 crops and every view's parameter row; here
  the batch goes from FFCV's (pinned) buffer to the device in one non-blocking copy on the
  loader's side stream (``pipelines.copy_stream``: it runs while the step runs), and every
  run of same-size views, ``[k * B, S, S, 3]`` uint8 with its rows ``[k * B, WIDTH]``, is
  finished in one ``pipelines.photometric.finish.finish_many`` call on the device (the CUDA
  kernel: two launches for all sizes; else torch ops). No host sync per batch: the compute
  stream waits for the copies' event on the device, and FFCV's thread, not the consumer,
  waits for the same event before it refills the buffer (``slots.py``).

Order: FFCV traverses this rank's share of the epoch order every backend uses
(``pipelines.order``: strided by GLOBAL rank, padded to equal length; no process group
needed) through a custom traversal order; the augmentation streams are seeded by (seed,
GLOBAL rank, epoch, sample). A new epoch switches both; nothing is recompiled. Each batch's
sample ids are the indices FFCV ran its pipeline on, handed over with the batch.

Threads: FFCV runs the decoder in a background thread with ``num_workers`` numba threads,
and sets torch's intra-op thread count to ``num_workers`` too (process-wide).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.reader import Reader
from ffcv.traversal_order.base import TraversalOrder

from ..copy_stream import CopyStream
from ..folder import DatasetError
from ..order import EpochPlan, PlanFor
from ..photometric.finish import IMPLS, finish_many
from ..sampling.param_row import WIDTH
from ..spec import AugmentationSpec
from . import reader_fix
from .decode_once import DECODE_FAILED, MultiCropDecoder
from .outputs import KEEP, RecycledOutputs
from .slots import GuardedLoader, Retired, SlotGuard
from .source import BetonSource, open_beton

log = logging.getLogger(__name__)

reader_fix.apply()  # before any FFCV Loader exists: see reader_fix.py

@dataclass(frozen=True)
class FFCVOptions:
    """Backend options (``build_loader(..., backend="ffcv", **options)``). The epoch order,
    "quasi_random" (page-local reads) included, is ``build_loader``'s ``order`` argument.

    os_cache: read through the OS page cache (True) or FFCV's process cache (False, for
        datasets larger than RAM).
    batches_ahead: batches FFCV decodes ahead of the consumer. On a GPU its thread also
        waits for the copy out of a buffer before refilling it, i.e. for the GPU work queued
        before that copy: raise it when the training loop runs more steps ahead of the GPU.
    photometric: where the photometric ops and normalisation run; the parameters are the
        sample's own stream's in every case (those the reference executor draws).
        "compiled": inside the decode op, per view, in FFCV's worker threads
            (``cpu_kernel``); CPU only.
        "device": after the op, on the loader's device: the op writes uint8 crops and the
            views' parameter rows, ``finish_many`` finishes them there (on a GPU the CUDA
            kernel, else torch ops; on the CPU the numba kernel, in the consumer's thread:
            the CPU twin of the GPU path).
        "auto": compiled on the CPU, device on a GPU.
    finish_impl: ``finish_many``'s implementation for "device" ("auto", "cuda",
        "cpu_kernel" or "torch"; see ``pipelines.photometric.finish``).
    fields: "IMAGE,LABEL", the names of the image and label fields to read (``source.py``);
        None: the file's first RGB image field and first int field.
    recycle_outputs: "compiled" only: copy each batch's finished views into a previous
        batch's tensors once nothing references them any more (``outputs.py``; saves
        mapping fresh pages every batch); False: a fresh tensor per batch.
    """

    photometric: str = "auto"
    finish_impl: str = "auto"
    os_cache: bool = True
    batches_ahead: int = 2
    fields: str | None = None
    recycle_outputs: bool = True


class RankSliceOrder(TraversalOrder):
    """FFCV traversal order: this rank's share of the epoch order (``EpochPlan.order``).

    FFCV instantiates an order object as ``order(loader)``; an instance of this class is
    passed and returns itself bound to the loader.
    """

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self.first_sample = 0  # a resumed epoch starts here in the rank's share

    def __call__(self, loader: Loader) -> "RankSliceOrder":
        self.loader = loader
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        """What FFCV traverses: the rank's order from ``first_sample`` on (a resumed epoch)."""
        return self.plan.order(epoch)[self.first_sample:]


class FFCVMultiCropLoader:
    """The FFCV executor, a ``pipelines.loader.Backend``.

    ``last_decode_counts`` (uint8 [B]) holds, after each batch, how many JPEG decodes each
    sample of that batch took: 1 for JPEG samples, 0 for raw ones. ``buffers_pinned``: on
    the device path, whether FFCV's buffers are in pinned memory (checked at the first
    batch; False on the CPU). Every tensor a batch yields is its own (nothing aliases FFCV's
    reused buffers).
    """

    def __init__(self, source: BetonSource, spec: AugmentationSpec, device: torch.device,
                 num_workers: int, plan_for: PlanFor, options: FFCVOptions) -> None:
        path = source.path
        self.path, self.spec, self.device = path, spec, device
        self.classes = list(source.classes)
        self.plan: EpochPlan = plan_for(source.num_samples)
        self.order = RankSliceOrder(self.plan)
        self.compiled = options.photometric == "compiled" or (
            options.photometric == "auto" and device.type == "cpu")
        if self.compiled and device.type != "cpu":
            raise ValueError("ffcv option photometric='compiled' runs on the CPU; use 'device' "
                             f"(or 'auto') for device {device}")
        self.finish_impl = options.finish_impl
        self._copies = CopyStream(device)  # the side stream of the device path's copies
        # the compiled path's output tensors, refilled once the consumer dropped them
        self._outputs = RecycledOutputs(KEEP * len(spec.size_runs()) if options.recycle_outputs
                                        else 0)
        self.decoder = MultiCropDecoder(spec, self.plan.seed, self.plan.rank,
                                        finish=self.compiled)
        image, label = source.image_field, source.label_field
        pipelines = {name: None for name in source.all_fields}  # other fields: not read
        pipelines[image] = PipelineSpec(image, decoder=self.decoder)
        pipelines[label] = PipelineSpec(label, decoder=IntDecoder())
        self._loader = GuardedLoader(
            str(path), batch_size=self.plan.batch_size, num_workers=num_workers,
            os_cache=options.os_cache, order=self.order, drop_last=self.plan.drop_last,
            batches_ahead=options.batches_ahead, pipelines=pipelines)
        outputs = list(self._loader.pipeline_specs)
        self._image_at, self._label_at = outputs.index(image), outputs.index(label)
        self._dtype = getattr(torch, spec.output_dtype)
        self._running: Retired | None = None  # the epoch being iterated
        self._retired: Retired | None = None  # the last one, until its copies are done
        self.buffers_pinned: bool | None = None
        self.last_decode_counts: torch.Tensor | None = None

    def batches(self, epoch: int, first_batch: int
                ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Batches ``first_batch`` .. of ``epoch`` (``pipelines.loader.Backend``): FFCV is
        given the rest of the order, nothing earlier is read."""
        self._stop()
        self.decoder.set_epoch(epoch)  # safe: no epoch thread is running
        self.order.first_sample = first_batch * self.plan.batch_size  # FFCV's next order
        self._loader.next_epoch = epoch
        guard = SlotGuard(self._loader.slots, previous=self._retired)
        self._retired = None  # now kept by ``guard`` until the new thread has waited for it
        running = self._loader.guarded_epoch(guard)
        self._running = current = Retired(running, guard)
        try:
            # FFCV numbers the batches of the (maybe shortened) order from 0: its slots and
            # the guard use that number
            for batch in range(self.plan.batches_per_epoch - first_batch):
                self._wait_for_batch(running)
                *outputs, ids = next(running)
                yield self._assemble(outputs[self._image_at], outputs[self._label_at], ids,
                                     batch, guard)
        finally:
            if self._running is current:
                self._stop()

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

    def _assemble(self, out: np.ndarray, labels: np.ndarray, ids: np.ndarray, batch: int,
                  guard: SlotGuard) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The decoder's output [n, row_entries] and labels [n, 1], both in FFCV's buffer
        slot of ``batch``, and the sample ids [n] -> (views, labels) on the device, copied
        out of the slot, and the ids."""
        n = out.shape[0]
        layout = self.decoder.layout
        flat = torch.from_numpy(out).view(-1)
        host = layout.split(flat, n)
        counts = host.counts  # read on the host
        self.last_decode_counts = counts.to(torch.uint8, copy=True)
        sample_ids = torch.from_numpy(ids)
        if bool((counts == DECODE_FAILED).any()):  # host tensor: no device sync
            first_bad = int((counts == DECODE_FAILED).nonzero()[0, 0])
            raise DatasetError(f"{self.path}: the JPEG of sample {int(ids[first_bad])} does "
                               "not decode (corrupt .beton? convert again)")
        if self.compiled:  # finished float32 views in FFCV's buffer: copy them out, into
            # memory already mapped where a previous batch's tensor is free (outputs.py)
            views = [v for finished in host.groups
                     for v in self._outputs.copy(finished, self._dtype).split(n)]
            label = torch.from_numpy(labels).view(-1).clone()
            guard.copied(batch, None)
            return views, label, sample_ids
        if self.buffers_pinned is None:
            self._check_pinned(flat)
        # The slot's crops + rows, and its labels, queued on the loader's side stream (from
        # pinned memory on a GPU: no host wait), so they run while the step runs; the
        # compute stream waits for them on the device, and FFCV refills the slot only after
        # the same event (slots.py).
        with self._copies.queue():
            data = torch.empty(n * layout.counts_at, dtype=torch.uint8, device=self.device)
            label = torch.empty(n, dtype=torch.int64, device=self.device)
            data.copy_(flat[:data.numel()], non_blocking=True)
            label.copy_(torch.from_numpy(labels).view(-1), non_blocking=True)
        guard.copied(batch, self._copies_event(data, label))
        part = layout.split(data, n)
        runs = layout.groups()
        finished = finish_many([(crops, part.rows[first:first + k].reshape(k * n, WIDTH))
                                for (first, k, _), crops in zip(runs, part.groups)],
                               self.spec, self.finish_impl)
        return [v for views in finished for v in views.split(n)], label, sample_ids

    def _copies_event(self, *copied: torch.Tensor) -> torch.cuda.Event | None:
        """An event completing with the copies just queued into ``copied``, which the
        compute stream waits on (``CopyStream.hand_over``; None on the CPU: done)."""
        return self._copies.hand_over(*copied)

    def _check_pinned(self, flat: torch.Tensor) -> None:
        """Once: warn when FFCV's buffers are not pinned (a CUDA copy from them would then
        wait for the GPU)."""
        self.buffers_pinned = self.device.type == "cuda" and flat.is_pinned()
        if self.device.type == "cuda" and not self.buffers_pinned:
            log.warning("FFCV's batch buffers are not in pinned memory: every copy to %s "
                        "waits for the GPU", self.device)

    def _stop(self) -> None:
        """Stop the running epoch's decoding thread, if any, and keep its buffers alive
        until the next epoch's thread (or ``close``) has waited for their copies."""
        running, self._running = self._running, None
        if running is not None:
            if not running.iterator.stop():
                log.warning("FFCV's decoding thread for %s did not stop; its buffers are "
                            "freed anyway", self.path)
            self._retired = running

    def close(self) -> None:
        """Stop the running epoch's decoding thread, if any, and release its buffers."""
        self._stop()
        retired, self._retired = self._retired, None
        if retired is not None:
            retired.guard.wait_all()  # host wait, once at close: copies out of the buffers


def build_ffcv_loader(data: str | Path, spec: AugmentationSpec, device: str | torch.device,
                      num_workers: int, plan_for: PlanFor, **opts) -> FFCVMultiCropLoader:
    """The FFCV executor over a .beton (converted or stock; ``source.py``), or its folder.

    opts: the fields of ``FFCVOptions``.
    """
    unknown = sorted(set(opts) - set(FFCVOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown ffcv backend option(s) {unknown}; known: "
                        f"{sorted(FFCVOptions.__dataclass_fields__)}")
    options = FFCVOptions(**opts)
    if options.photometric not in ("auto", "compiled", "device"):
        raise ValueError(f"ffcv option photometric={options.photometric!r}: choose from auto, "
                         "compiled, device")
    if options.finish_impl not in IMPLS:
        raise ValueError(f"ffcv option finish_impl={options.finish_impl!r}: choose from "
                         f"{', '.join(IMPLS)}")
    if options.batches_ahead < 1:
        raise ValueError(f"ffcv option batches_ahead must be >= 1, got {options.batches_ahead}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    source = open_beton(data, options.fields)
    return FFCVMultiCropLoader(source, spec, device, max(1, num_workers), plan_for, options)
