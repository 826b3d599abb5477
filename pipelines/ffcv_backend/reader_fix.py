"""A fix for FFCV 1.0.2's OS-cache reader, applied once when the FFCV backend is imported.

``ffcv.memory_managers.os_cache.OSCacheManager.state_type`` marks its arrays read-only by
assigning ``.mutable = False`` to the type object ``numba.uint8[::1]``. Numba types are
interned, so this edits numba's one shared "mutable uint8 1-d array" type in place: every
array of that type compiled afterwards is typed read-only, and dictionaries keyed on the old
type (numba's per-signature overload tables of module-level jitted functions) are corrupted
once a second FFCV Loader is built in the process (a KeyError inside numba, seen as a silently
dead FFCV thread). The replacement below builds the same reader with a properly constructed
read-only type and mutates nothing. Pixel data and semantics are unchanged.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.pipeline.compiler import Compiler

_READONLY_BYTES = nb.types.Array(nb.types.uint8, 1, "C", readonly=True)


def _state_type(self) -> nb.types.Tuple:
    """(file bytes, sample pointers, sample sizes), as FFCV types them in effect."""
    return nb.types.Tuple([_READONLY_BYTES, nb.uint64[::1], nb.uint64[::1]])


def _compile_reader(self):
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, _READONLY_BYTES(nb.uint64, self.state_type))


def apply() -> None:
    """Install the fix (idempotent)."""
    OSCacheManager.state_type = property(_state_type)
    OSCacheManager.compile_reader = _compile_reader
