"""The DALI backend of ``build_loader``: ``(views, labels)`` batches from one DALI pipeline.

    EpochFeed (host: order, bytes, parameters)  ->  external_source
        ->  multicrop_graph (decode once, every view)  ->  torch tensors on ``device``

Contract (``pipelines/loader.py``), identical to the reference backend: the same epoch
order (whole-dataset permutation per epoch, strided by GLOBAL rank, padded to equal
length), the same augmentation parameters (the counter stream ``sample_rng(seed, rank,
epoch, index)``, drawn by the feed in compiled code), so a resumed run reads the same
samples with the same parameters. ``len(loader)`` batches per epoch on every rank; with
``drop_last=False`` the last batch is smaller.

One pipeline serves consecutive epochs; it is rebuilt only when ``set_epoch`` jumps (e.g.
on resume) or an epoch was abandoned part-way, and when a file that passed the cheap checks
fails in DALI's decoder: the loader finds it (PIL), logs it, replaces it as the reference
loader does, and resumes the epoch at the failed batch, so one bad file never stops a run.

Devices: ``cpu`` runs DALI without CUDA (``device_id=None``); ``cuda[:k]`` decodes with
``mixed`` and leaves every view in GPU memory, copied device-to-device into the torch
tensors (no host round trip). bfloat16 (which DALI lacks) is cast on the device.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.pytorch import feed_ndarray

from ..folder import DatasetError
from ..spec import AugmentationSpec
from .feed import EpochFeed, EpochPlan, decode_problem
from .graph import DecoderOptions, multicrop_graph
from .readers import open_dataset

log = logging.getLogger(__name__)

GPU_FEED_WORKERS = 4  # default feed processes on a GPU (see DaliOptions.py_workers)
MAX_BAD_FILES = 1000  # files replaced after DALI decode failures before giving up


@dataclass(frozen=True)
class DaliOptions:
    """Backend options of ``build_loader(..., backend="dali", **options)``.

    py_workers: worker processes that read files and draw parameters (DALI's parallel
        external source); 0 does it in the calling thread. The feed costs about 1 ms of
        Python per image with the full recipe (0.7-2.3 ms measured on a shared 2-core
        machine), so a GPU needs several. None (default): 0 on the CPU, 4 on a GPU. Each
        worker costs a process start (``spawn``) when the pipeline is built.
    prefetch: batches prepared ahead of the one being consumed.
    verify_images: ImageFolder only: decode every file once with PIL at start-up and leave
        out the ones that fail (a converted dataset was verified by the converter).
    debug: iterate ``(views, labels, info)`` with ``info = {"index": int64 [B] dataset
        indices, "params": float32 [B, num_views, LAYOUT.width] packed view parameters}``.
    decoder: ``DecoderOptions`` (hw_decoder_load, memory paddings, size hints).
    """

    py_workers: int | None = None
    prefetch: int = 2
    verify_images: bool = False
    debug: bool = False
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
        return out


def _device_id(device: torch.device) -> int | None:
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"dali backend runs on 'cpu' or 'cuda' devices, not {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"dali backend: device {device} requested but CUDA is not available")
    return device.index if device.index is not None else torch.cuda.current_device()


class DaliLoader:
    """Multi-crop batches from a DALI pipeline; see the module docstring for the contract."""

    def __init__(self, data: str | Path, batch_size: int, spec: AugmentationSpec,
                 device: str | torch.device, num_workers: int, seed: int, rank: int,
                 world_size: int, shuffle: bool, drop_last: bool, options: DaliOptions) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.dataset = open_dataset(data, options.verify_images)
        for s in self.dataset.skipped[:50]:
            log.warning("%s", s)
        self.classes = self.dataset.classes
        self.skipped = self.dataset.skipped
        self.num_samples = len(self.dataset)
        self.spec, self.options = spec, options
        self.device = torch.device(device)
        self.device_id = _device_id(self.device)
        self.num_threads = max(1, num_workers)
        self.epoch = 0
        self.plan = EpochPlan(self.num_samples, batch_size, seed, rank, world_size, shuffle,
                              drop_last)
        if len(self) == 0:
            raise DatasetError(
                f"{data}: {self.num_samples} images give {self.plan.samples_per_rank} per rank "
                f"(world size {world_size}), fewer than one batch of {batch_size}; lower the "
                "batch size or pass drop_last=False")
        self._pipe = None
        self._next_epoch: int | None = None  # the epoch the live pipeline will run next
        self._bad: set[int] = set()  # dataset indices DALI failed to decode

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.plan.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and augmentation streams; call before iterating."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ pipeline
    def _build(self, start_epoch: int, first_batch: int = 0) -> None:
        self.close()
        feed = EpochFeed(self.dataset, self.spec, self.plan, start_epoch,
                         with_index=self.options.debug, first_batch=first_batch,
                         bad=frozenset(self._bad))
        workers = self.options.py_workers
        if workers is None:
            workers = 0 if self.device_id is None else GPU_FEED_WORKERS
        parallel = workers > 0
        graph_device = "cpu" if self.device_id is None else "gpu"
        debug = self.options.debug

        @pipeline_def(batch_size=self.plan.batch_size, num_threads=self.num_threads,
                      device_id=self.device_id, prefetch_queue_depth=self.options.prefetch,
                      py_num_workers=max(1, workers), py_start_method="spawn")
        def pipeline():
            encoded, params, labels, *index = fn.external_source(
                source=feed, num_outputs=feed.num_outputs, batch=True, batch_info=True,
                parallel=parallel)
            views = multicrop_graph(encoded, params, self.spec, graph_device,
                                    self.options.decoder)
            return (*views, labels, *index, params) if debug else (*views, labels)

        pipe = pipeline()
        pipe.build()
        self._pipe, self._next_epoch = pipe, start_epoch

    def _to_torch(self, tl, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Copy a DALI batch (uniform shapes) into a new torch tensor on ``device``."""
        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=dtype, device=device)
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        return feed_ndarray(t, out, cuda_stream=stream)

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.epoch
        if self._pipe is None or self._next_epoch != epoch:
            self._build(epoch)
        self._next_epoch = None  # unknown until this epoch is fully consumed
        t = 0
        while t < len(self):
            try:
                # Host waits here for the batch DALI prepared ahead (prefetch); on a GPU the
                # views stay in device memory and the copies below run on torch's stream.
                out = self._pipe.run()
            except StopIteration:
                raise RuntimeError(f"DALI pipeline ended epoch {epoch} after {t} of "
                                   f"{len(self)} batches") from None
            except RuntimeError as e:
                self._recover(epoch, t, e)
                continue
            yield self._batch(out)
            t += 1
        try:  # the feed ends DALI's epoch after the last batch; start the next one
            self._pipe.run()
        except StopIteration:
            self._pipe.reset()
            self._next_epoch = epoch + 1

    def _batch(self, out) -> tuple:
        """Pipeline outputs -> (views, labels[, info]) as torch tensors."""
        n = self.spec.num_views
        view_dtype = torch.float16 if self.spec.output_dtype == "float16" else torch.float32
        final_dtype = getattr(torch, self.spec.output_dtype)
        cpu = torch.device("cpu")
        views = [self._to_torch(out[v], view_dtype, self.device).to(final_dtype)
                 for v in range(n)]
        labels = self._to_torch(out[n], torch.int64, cpu).view(-1)
        labels = labels.to(self.device, non_blocking=True)
        if not self.options.debug:
            return views, labels
        info = {"index": self._to_torch(out[n + 1], torch.int64, cpu).view(-1),
                "params": self._to_torch(out[n + 2], torch.float32, cpu)}
        return views, labels, info

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
        for b in range(t, min(t + self.options.prefetch + 1, len(self))):
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

    def __enter__(self) -> "DaliLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dali_error_summary(err: Exception) -> str:
    """The informative lines of a DALI error (which operator, what it encountered)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    op = next((ln for ln in lines if ln.startswith("Error in")), None)
    after = lines[lines.index("encountered:") + 1] if "encountered:" in lines[:-1] else None
    picked = [ln for ln in (op, after) if ln]
    return " ".join(picked) if picked else (lines[0] if lines else type(err).__name__)


def build_dali_loader(data: str | Path, batch_size: int, spec: AugmentationSpec,
                      device: str | torch.device, num_workers: int, seed: int, rank: int,
                      world_size: int, shuffle: bool, drop_last: bool, **opts) -> DaliLoader:
    """``build_loader``'s DALI backend; ``opts`` are ``DaliOptions`` / ``DecoderOptions`` fields.

    ``num_workers`` is the number of DALI CPU threads (decode on the CPU, crops and ops in
    CPU mode; host-side decode stages on a GPU).
    """
    return DaliLoader(data, batch_size, spec, device, num_workers, seed, rank, world_size,
                      shuffle, drop_last, DaliOptions.from_kwargs(**opts))
