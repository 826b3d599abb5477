"""Host tensors for the CPU executor's finished views, refilled once nothing holds them.

Each batch's finished float32 views (~2.3 MB per image for 2 x 224 + 10 x 96 px) are copied
out of FFCV's buffer, so that nothing the loader yields aliases memory FFCV reuses. A copy
into fresh memory costs several times the copy itself: the kernel maps and zeroes every
page of a ~150 MB batch first (``dino-bench stages``' collate row; measured here 4-5x a
copy into memory already mapped). ``RecycledOutputs`` therefore keeps the last few output
tensors and refills one whose storage nothing outside the pool references any more (the
consumer dropped every view of it); a tensor still referenced anywhere is never written,
so every yielded tensor stays its own until its holder lets it go.

References are counted with torch's storage use count (``torch._C._storage_Use_Count``, a
private API); where it is missing every copy is fresh (``plain_copy``, the twin).

Every copy runs on the calling thread alone (``one_thread_copy``): torch's ``copy_`` of a
tensor this large splits it over torch's intra-op OpenMP pool, whose threads then spin-wait
for the next parallel region (libgomp's default wait policy). The loader copies a batch
every few milliseconds, so with nothing else for that pool to do the spinning alone cost
~2 ms of CPU per image at batch 8 (more than the copy: measured here with per-thread CPU
times; ``OMP_WAIT_POLICY=PASSIVE`` removed it), and it competes with FFCV's decode threads
for the same cores. numpy's copy is one thread and wakes no pool.
"""
from __future__ import annotations

import numpy as np
import torch

KEEP = 3  # batches kept: the one being consumed, the one before it, one spare
NUMPY_DTYPES = (torch.float32, torch.float16, torch.float64, torch.uint8)  # numpy has these


def plain_copy(src: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The obviously-correct twin: a fresh copy of ``src`` as ``dtype``."""
    return src.to(dtype, copy=True)


def one_thread_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` (same shape, CPU tensors) on the calling thread only: numpy's copy
    (cast included: IEEE round to nearest even, as torch) where numpy has both dtypes, else
    torch's (bfloat16, which numpy lacks: that copy may still use torch's thread pool)."""
    if dst.dtype in NUMPY_DTYPES and src.dtype in NUMPY_DTYPES:
        with np.errstate(over="ignore"):  # to inf, as torch, without numpy's warning
            np.copyto(dst.numpy(), src.numpy(), casting="unsafe")
    else:
        dst.copy_(src)


def _use_count(t: torch.Tensor) -> int | None:
    """References to ``t``'s storage (None where torch does not say)."""
    counter = getattr(torch._C, "_storage_Use_Count", None)
    if counter is None:
        return None
    return int(counter(t.untyped_storage()._cdata))


class RecycledOutputs:
    """``copy(src, dtype)`` = ``plain_copy(src, dtype)`` in value, into a kept tensor of the
    same shape and dtype that nothing else references, else into a fresh one (then kept,
    the oldest dropped beyond ``keep``)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._kept: list[tuple[torch.Tensor, int]] = []  # (tensor, its count when only kept)
        self.reused = 0  # copies that refilled a kept tensor (for tests and benchmarks)

    def copy(self, src: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        for i, (t, alone) in enumerate(self._kept):
            if t.shape == src.shape and t.dtype == dtype and _use_count(t) == alone:
                one_thread_copy(t, src)
                self._kept.append(self._kept.pop(i))  # most recently used last
                self.reused += 1
                return t
        fresh = torch.empty(src.shape, dtype=dtype)
        one_thread_copy(fresh, src)
        alone = _use_count(fresh)
        if alone is not None and self.keep > 0:
            self._kept.append((fresh, alone))
            del self._kept[:-self.keep]
        return fresh
