"""Peak tensor memory on any device, the CPU included, where the allocator keeps no
statistics: ``TensorPeak`` counts the bytes of the storages that ops create while any
tensor on them is alive.

It is a ``TorchDispatchMode``: every op's outputs pass through it (forward, backward and
optimizer ops alike, when they run on the thread that entered it); a storage is counted
once, from the first output on it until the last output tensor seen on it is freed (a
``weakref.finalize``; torch keeps a tensor's Python object alive while C++ still holds the
tensor, so saved activations count until the backward releases them). Tensors that exist
before the block (parameters, inputs) are not counted unless an op in it creates them.
It costs a Python call per op: measure memory in its own untimed run, not while timing.
"""
from __future__ import annotations

import weakref

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """``with TensorPeak() as m: ...`` -> ``m.peak``: the most bytes that tensors created in
    the block held at once; ``m.live``: those still held."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._alive: dict[int, int] = {}  # storage address -> its output tensors alive

    def _freed(self, key: int, nbytes: int) -> None:
        self._alive[key] -= 1
        if not self._alive[key]:
            del self._alive[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if key not in self._alive:
                    self._alive[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self._alive[key] += 1
                weakref.finalize(t, self._freed, key, nbytes)
        return out
