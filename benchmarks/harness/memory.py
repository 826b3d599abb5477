"""Peak tensor memory on any device, the CPU included, where the allocator keeps no
statistics: ``TensorPeak`` adds up the storages that ops create while any tensor on them is
alive.

It is a ``TorchDispatchMode``: every op's outputs pass through it (forward, backward and
optimizer ops alike, when they run on the thread that entered it); a storage is followed
from the first output on it until the last output tensor seen on it is freed (torch keeps a
tensor's Python object alive while C++ still holds the tensor, so saved activations count
until the backward releases them). After every op the live storages' current sizes are
added up: a storage resized in place (FSDP2 frees and re-allocates its all-gather buffers
that way, outside any op) counts at its size of the moment. Tensors that exist before the
block (parameters, inputs) are not counted unless an op in it creates them. It costs a
Python loop over the live storages per op: measure memory in its own untimed run, never
while timing.
"""
from __future__ import annotations

import weakref

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _nbytes(t: Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except RuntimeError:  # a storage freed in place (resized to nothing)
        return 0


class TensorPeak(TorchDispatchMode):
    """``with TensorPeak() as m: ...`` -> ``m.peak``: the most bytes that tensors created in
    the block held at once (read after each op); ``m.live``: those held now."""

    def __init__(self):
        super().__init__()
        self.peak = 0
        # storage (its C address) -> {id: weak reference} of its output tensors alive
        self._storages: dict[int, dict[int, weakref.ref]] = {}

    def _freed(self, key: int, tid: int) -> None:
        refs = self._storages.get(key)
        if refs is not None:
            refs.pop(tid, None)
            if not refs:
                del self._storages[key]

    @property
    def live(self) -> int:
        total = 0
        for refs in list(self._storages.values()):
            for ref in list(refs.values()):
                t = ref()
                if t is not None:  # one tensor per storage gives its size
                    total += _nbytes(t)
                    break
        return total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                key, tid = t.untyped_storage()._cdata, id(t)
                self._storages.setdefault(key, {})[tid] = weakref.ref(
                    t, lambda _, key=key, tid=tid: self._freed(key, tid))
        self.peak = max(self.peak, self.live)
        return out
