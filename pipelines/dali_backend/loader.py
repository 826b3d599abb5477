"""The DALI backend of ``build_loader``: multi-crop batches from one DALI pipeline.

    EpochFeed (host: order, bytes, boxes, parameter rows)  ->  external_source
        ->  multicrop_graph (decode once, every view's resized, flipped crop; uint8)
        ->  torch: views of one size stacked, all sizes finished by one ``finish_many`` call
            (photometric ops, normalise) with the batch's parameter rows, on ``device``

Wrapped by ``pipelines.loader.MultiCropLoader`` like every backend: the same epoch order
(``pipelines.order``; each batch's sample ids come out of the pipeline with it), the same
augmentation parameters (the counter stream ``sample_rng(seed, rank, epoch, index)``,
drawn by the feed in compiled code), so a resumed run reads the same samples with the same
parameters.

One pipeline serves consecutive epochs; it is rebuilt only when ``set_epoch`` jumps (e.g.
on resume) or an epoch was abandoned part-way, and when a file that passed the cheap checks
fails in DALI's decoder: the loader finds it (PIL), logs it, replaces it as the reference
loader does, and resumes the epoch at the failed batch, so one bad file never stops a run.

Devices: ``cpu`` runs DALI without CUDA (``device_id=None``) and the finish in the numba
kernel. ``cuda[:k]`` decodes with ``mixed`` and leaves every view in GPU memory; DALI hands
its outputs over on the loader's side stream (``run(stream)``: no host wait for the GPU
work; ``pipelines.copy_stream``), where they are copied device-to-device into one uint8
tensor per view size, and the parameter rows and labels, drawn on the host, go up through
pinned memory, non-blocking; the compute stream waits for those copies on the device (an
event) and finishes every size in one call (the CUDA kernel, else torch ops). The copies
run while the step runs. Nothing in a batch waits for the GPU.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from nvidia.dali import Pipeline, fn, pipeline_def
from nvidia.dali.plugin.pytorch import feed_ndarray

from ..copy_stream import CopyStream
from ..folder import report_skipped
from ..order import EpochPlan, PlanFor
from ..photometric.finish import IMPLS, finish_many
from ..spec import AugmentationSpec
from .feed import EpochFeed, decode_problem
from .graph import DecoderOptions, multicrop_graph
from .readers import open_dataset

log = logging.getLogger(__name__)

GPU_FEED_WORKERS = 4  # default feed processes on a GPU (see DaliOptions.py_workers)
# Batches the parallel feed prepares ahead, per worker process. With batch=True each batch is
# one task for one worker, and DALI schedules only ``prefetch_queue_depth`` tasks ahead: at
# depth 1 (DALI's default) one worker runs and the others idle. Two per worker keeps every
# worker busy with one batch while its previous one waits to be taken in order, so a slow
# batch (a cold file read) does not stall the rest; each costs a batch of encoded bytes in
# shared memory (about 7 MB for 64 ImageNet JPEGs).
FEED_BATCHES_PER_WORKER = 2
MAX_BAD_FILES = 1000  # files replaced after DALI decode failures before giving up


@dataclass(frozen=True)
class DaliOptions:
    """Backend options of ``build_loader(..., backend="dali", **options)``.

    py_workers: worker processes that read files and draw parameters (DALI's parallel
        external source); 0 does it in the calling thread. The feed costs about 0.08 ms of
        CPU per image with the full recipe (benchmarks/results/cpu-2core_202611_feed.md:
        0.084 ms, 0.67 cores at 8,000 images/s, files in the page cache), so one process
        nearly keeps up with a GPU; cold disk reads add waits, which more processes hide.
        None (default): 0 on the CPU, 4 on a GPU. Each worker costs a process start
        (``spawn``) when the pipeline is built.
    prefetch: batches the DALI pipeline prepares ahead of the one being consumed.
    verify_images: ImageFolder only: decode every file once with PIL at start-up and leave
        out the ones that fail (a converted dataset was verified by the converter).
    debug: after each batch, ``loader.backend.last_info`` holds ``{"index": int64 [B] the
        dataset indices actually read (a replaced bad file shows its replacement), "rows":
        float64 [B, num_views, param_row.WIDTH] the views' parameters, "boxes": float32
        [B, num_views, 4] the graph's crop boxes (``boxes.py``)}``, on the CPU.
    photometric: ``finish_many``'s implementation: "auto" (the CUDA kernel or torch ops on
        a GPU, the numba kernel on the CPU), or one of "cuda", "cpu_kernel", "torch".
    decoder: ``DecoderOptions`` (hw_decoder_load, memory paddings, size hints).
    """

    py_workers: int | None = None
    prefetch: int = 2
    verify_images: bool = False
    debug: bool = False
    photometric: str = "auto"
    decoder: DecoderOptions = DecoderOptions()

    @classmethod
    def from_kwargs(cls, **opts) -> "DaliOptions":
        """Flat keywords (decoder fields included) -> options; unknown names are an error."""
        decoder_names = {f.name for f in dataclasses.fields(DecoderOptions)}
        own = {f.name for f in dataclasses.fields(cls)} - {"decoder"}
        unknown = sorted(set(opts) - decoder_names - own)
        if unknown:
            raise TypeError(f"dali backend: unknown option(s) {', '.join(unknown)} (known: "
                            f"{', '.join(sorted(own | decoder_names))})")
        decoder = DecoderOptions(**{k: v for k, v in opts.items() if k in decoder_names})
        out = cls(decoder=decoder, **{k: v for k, v in opts.items() if k in own})
        if (out.py_workers is not None and out.py_workers < 0) or out.prefetch < 1:
            raise ValueError(f"dali backend: py_workers must be >= 0 and prefetch >= 1, got "
                             f"{out.py_workers} and {out.prefetch}")
        if out.photometric not in IMPLS:
            raise ValueError(f"dali backend: photometric must be one of {IMPLS}, got "
                             f"{out.photometric!r}")
        return out


def build_pipeline(feed: EpochFeed, spec: AugmentationSpec, batch_size: int, num_threads: int,
                   device_id: int | None, options: "DaliOptions", workers: int) -> Pipeline:
    """The loader's DALI pipeline, defined but not built (``_build_graph()`` on a pipeline
    with ``device_id=0`` traces the GPU graph without a GPU).

    Outputs: the ``spec.num_views`` uint8 views ``[S, S, 3]`` (on the GPU when
    ``device_id`` is set), then the rows float64 [num_views, WIDTH] and the (label, sample
    id) int64 [2] of each sample, then (``options.debug``) the dataset index actually read
    and the boxes, all on the CPU.
    ``workers`` > 0 runs the feed in that many processes (parallel external source).
    """
    parallel = workers > 0
    graph_device = "cpu" if device_id is None else "gpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=options.prefetch, py_num_workers=max(1, workers),
                  py_start_method="spawn")
    def pipeline():
        encoded, boxes, rows, meta, *used = fn.external_source(
            source=feed, num_outputs=feed.num_outputs, batch=True, batch_info=True,
            parallel=parallel,
            prefetch_queue_depth=FEED_BATCHES_PER_WORKER * workers if parallel else None)
        views = multicrop_graph(encoded, boxes, spec, graph_device, options.decoder)
        debug = (*used, boxes) if options.debug else ()
        return (*views, rows, meta, *debug)

    return pipeline()


def _device_id(device: torch.device) -> int | None:
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"dali backend runs on 'cpu' or 'cuda' devices, not {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"dali backend: device {device} requested but CUDA is not available")
    return device.index if device.index is not None else torch.cuda.current_device()


class DaliLoader:
    """Multi-crop batches from a DALI pipeline; see the module docstring."""

    def __init__(self, data: str | Path, spec: AugmentationSpec, device: str | torch.device,
                 num_workers: int, plan_for: PlanFor, options: DaliOptions) -> None:
        self.dataset = open_dataset(data, options.verify_images)
        report_skipped(self.dataset.skipped)
        self.classes = self.dataset.classes
        self.skipped = self.dataset.skipped
        self.plan: EpochPlan = plan_for(len(self.dataset))
        self.spec, self.options = spec, options
        self.device = torch.device(device)
        self.device_id = _device_id(self.device)
        self._copies = CopyStream(self.device)  # DALI hands its outputs over on this stream
        self.num_threads = max(1, num_workers)
        self._pipe = None
        self._next_epoch: int | None = None  # the epoch the live pipeline will run next
        self._bad: set[int] = set()  # dataset indices DALI failed to decode
        self.last_info: dict | None = None  # options.debug: the last batch's parameters

    # ------------------------------------------------------------------ pipeline
    def _build(self, start_epoch: int, first_batch: int = 0) -> None:
        self.close()
        feed = EpochFeed(self.dataset, self.spec, self.plan, start_epoch,
                         with_index=self.options.debug, first_batch=first_batch,
                         bad=frozenset(self._bad))
        workers = self.options.py_workers
        if workers is None:
            workers = 0 if self.device_id is None else GPU_FEED_WORKERS
        pipe = build_pipeline(feed, self.spec, self.plan.batch_size, self.num_threads,
                              self.device_id, self.options, workers)
        pipe.build()
        self._pipe, self._next_epoch = pipe, start_epoch

    def batches(self, epoch: int, first_batch: int) -> Iterator[tuple]:
        """Batches ``first_batch`` .. of ``epoch`` (``pipelines.loader.Backend``). One
        pipeline serves consecutive epochs; a jump or a first batch > 0 rebuilds it there,
        nothing earlier is read."""
        t = first_batch
        if t > 0:
            self._build(epoch, first_batch=t)
        elif self._pipe is None or self._next_epoch != epoch:
            self._build(epoch)
        self._next_epoch = None  # unknown until this epoch is fully consumed
        while t < self.plan.batches_per_epoch:
            try:
                # The host waits here until DALI has the batch's CPU work done (prefetched
                # ahead); its GPU work is only ordered before the loader's side stream, not
                # waited for: the copies below queue behind it there.
                out = self._pipe.run(self._copies.stream)
            except StopIteration:
                return  # the wrapper reports the short epoch
            except RuntimeError as e:
                self._recover(epoch, t, e)
                continue
            yield self._batch(out)
            t += 1
        try:  # the feed ends DALI's epoch after the last batch; start the next one
            self._pipe.run(self._copies.stream)
        except StopIteration:
            self._pipe.reset()
            self._next_epoch = epoch + 1

    def _batch(self, out) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Pipeline outputs -> (views, labels, sample ids): each run of same-size views is
        copied into one uint8 [k * B, S, S, 3] tensor (view-major, as the rows are ordered),
        and all runs are finished in one ``finish_many`` call; ``views`` are [B, 3, S, S]
        slices of its results."""
        n = self.spec.num_views
        pinned = self._copies.stream is not None
        host_rows = _host_copy(out[n], torch.float64, pinned)  # [B, views, W]
        host_meta = _host_copy(out[n + 1], torch.int64, pinned)  # [B, 2]: label, sample id
        ids = host_meta[:, 1].clone()  # sample ids stay on the host
        b = host_meta.shape[0]
        runs = self.spec.size_runs()
        # Every copy on the loader's side stream, where ``out`` is bound (``run(stream)``:
        # DALI made its data ready there and frees its buffers in that stream's order, so
        # not before these copies have run): pinned host memory -> device and DALI's views
        # device-to-device, all queued, no host wait; they run while the step runs.
        with self._copies.queue():
            rows = host_rows.to(self.device, non_blocking=True)
            meta = host_meta.to(self.device, non_blocking=True)
            crops = [torch.empty((k, b, size, size, 3), dtype=torch.uint8, device=self.device)
                     for _, k, size in runs]
            for (first, k, _), run in zip(runs, crops):
                for j in range(k):
                    feed_ndarray(out[first + j].as_tensor(), run[j],
                                 cuda_stream=self._copies.stream)
        self._copies.hand_over(rows, meta, *crops)  # the compute stream waits for them
        rows = rows.transpose(0, 1)  # [views, B, W]
        finished = finish_many(
            [(run.view(k * b, size, size, 3), rows[first:first + k].reshape(k * b, -1))
             for (first, k, size), run in zip(runs, crops)],
            self.spec, self.options.photometric)
        views = [v for views in finished for v in views.split(b)]
        if self.options.debug:
            self.last_info = {"index": _host_copy(out[n + 2], torch.int64, False).view(-1),
                              "rows": host_rows,
                              "boxes": _host_copy(out[n + 3], torch.float32, False)}
        return views, meta[:, 0].contiguous(), ids

    def _recover(self, epoch: int, t: int, err: RuntimeError) -> None:
        """After a pipeline failure at batch ``t``: replace the files that do not decode and
        rebuild at batch ``t``; re-raise with a clear message when no bad file is found."""
        bad = self._find_bad(epoch, t) - self._bad
        if not bad or len(self._bad) + len(bad) > MAX_BAD_FILES:
            self.close()
            raise RuntimeError(self._diagnose(epoch, t, err, bad)) from None
        for i in sorted(bad):
            log.warning("DALI could not decode %s; replacing it by the next sample (pass "
                        "verify_images=True or convert the dataset to leave it out)",
                        self.dataset.describe(i))
        self._bad |= bad
        self._build(epoch, first_batch=t)
        self._next_epoch = None

    def _find_bad(self, epoch: int, t: int) -> set[int]:
        """Dataset indices of the batches in flight from ``t`` that PIL cannot decode."""
        bad = set()
        for b in range(t, min(t + self.options.prefetch + 1, self.plan.batches_per_epoch)):
            for i in self.plan.batch_indices(epoch, b):
                i = int(i)
                if i not in self._bad and decode_problem(self.dataset.read(i)[0]) is not None:
                    bad.add(i)
        return bad

    def _diagnose(self, epoch: int, t: int, err: Exception, bad: set[int]) -> str:
        """The pipeline error, with the undecodable files of the batches in flight."""
        names = [f"{self.dataset.describe(i)}: {decode_problem(self.dataset.read(i)[0])}"
                 for i in sorted(bad)[:10]]
        hint = ("; files that do not decode: " + "; ".join(names) + " (pass "
                "verify_images=True or convert the dataset with dino-convert)") if names else ""
        return (f"DALI pipeline failed in epoch {epoch}, batch {t}: "
                f"{_dali_error_summary(err)}{hint}")

    def close(self) -> None:
        """Release the pipeline (threads, worker processes, device memory)."""
        self._pipe = None
        self._next_epoch = None


def _host_copy(tl, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """A CPU output of the pipeline (uniform shapes) as a new torch tensor, in pinned memory
    when it goes on to a GPU (so that copy can be non-blocking). DALI reuses its buffer."""
    t = tl.as_tensor()
    return feed_ndarray(t, torch.empty(t.shape(), dtype=dtype, pin_memory=pinned))


def _dali_error_summary(err: Exception) -> str:
    """The informative lines of a DALI error (which operator, what it encountered)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    op = next((ln for ln in lines if ln.startswith("Error in")), None)
    after = lines[lines.index("encountered:") + 1] if "encountered:" in lines[:-1] else None
    picked = [ln for ln in (op, after) if ln]
    return " ".join(picked) if picked else (lines[0] if lines else type(err).__name__)


def build_dali_loader(data: str | Path, spec: AugmentationSpec, device: str | torch.device,
                      num_workers: int, plan_for: PlanFor, **opts) -> DaliLoader:
    """``build_loader``'s DALI backend; ``opts`` are ``DaliOptions`` / ``DecoderOptions`` fields.

    ``num_workers`` is the number of DALI CPU threads (decode on the CPU, crops and ops in
    CPU mode; host-side decode stages on a GPU).
    """
    return DaliLoader(data, spec, device, num_workers, plan_for, DaliOptions.from_kwargs(**opts))
