"""The input list of a conversion, compact: no Python object per image.

A list of ``(path, label)`` tuples costs ~200 bytes of Python objects per image (tuple,
str, int), and a converter's forked workers inherit it: Python's garbage collector and
reference counting write to those objects' pages, so each worker ends up with its own copy.
At ImageNet's 1.28M images that is ~250 MB per process, growing with the corpus.

``Listing`` holds the same list in four flat buffers (``array`` and ``bytes``: no numpy,
so the wds converter starts without it), ``len(name) + 8`` bytes per image as long as the
narrow types hold (each array widens itself the first time a value does not fit):

- ``dirs``: the distinct folder prefixes (``"root/class/"``), a few Python strings;
- ``names``: every file name, ``os.fsencode``-d (undecodable names round-trip through
  surrogate escapes), concatenated (the builder's ``bytearray``, never copied);
- ``ends`` (uint32 [N], int64 past 4 GiB of names): where name ``i`` ends in ``names`` (it
  starts where ``i - 1`` ends);
- ``dir_of`` (uint16 [N], int32 past 65,535 folders): the index of image ``i``'s folder in
  ``dirs``;
- ``labels`` (int16 [N], int32 past 32,767 classes): its label (-1 when unlabeled).

``listing[i]`` is ``(dirs[dir_of[i]] + name_i, labels[i])``: exactly the string the folder
scan made (the split is at the last separator, so joining gives it back unchanged). None
of these buffers is ever written after ``build``, and none holds references, so forked
workers share their pages with the parent for the whole conversion. Workers get index
ranges and read paths from the listing.
"""
from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator

_SEPARATORS = "/" + (os.sep if os.sep != "/" else "") + (os.altsep or "")


def _split(path: str) -> tuple[str, str]:
    """(folder prefix with its trailing separator, file name): ``prefix + name == path``."""
    cut = max(path.rfind(s) for s in _SEPARATORS) + 1
    return path[:cut], path[cut:]


@dataclass(frozen=True)
class Listing:
    """``N`` inputs ``(path, label)`` in conversion order, in flat buffers (see the module
    docstring); a read-only sequence of tuples."""

    dirs: tuple[str, ...]
    names: bytes | bytearray
    ends: array       # "I" uint32 or "q" int64 [N]
    dir_of: array     # "H" uint16 or "i" int32 [N]
    labels: array     # "h" int16 or "i" int32 [N]

    def __len__(self) -> int:
        return len(self.ends)

    def path(self, i: int) -> str:
        if i < 0:
            i += len(self)
        start = self.ends[i - 1] if i else 0
        name = self.names[start:self.ends[i]].decode(sys.getfilesystemencoding(),
                                                     sys.getfilesystemencodeerrors())
        return self.dirs[self.dir_of[i]] + name

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.path(i), self.labels[i]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return self.items(0, len(self))

    def items(self, start: int, stop: int) -> Iterator[tuple[str, int]]:
        """``(path, label)`` of inputs ``start .. stop - 1``, one at a time."""
        return (self[i] for i in range(start, min(stop, len(self))))

    def relabel(self, new_labels: list[int]) -> "Listing":
        """The same inputs, label ``y`` replaced by ``new_labels[y]`` (e.g. class indices of
        another split's class list)."""
        return Listing(self.dirs, self.names, self.ends, self.dir_of,
                       array("i", (new_labels[y] for y in self.labels)))

    @property
    def nbytes(self) -> int:
        """Bytes of the per-image buffers (names, ends, folder indices, labels): what the
        listing grows by with the corpus; ``dirs`` is per folder."""
        return (len(self.names) + self.ends.itemsize * len(self.ends)
                + self.dir_of.itemsize * len(self.dir_of)
                + self.labels.itemsize * len(self.labels))

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[str, int]]) -> "Listing":
        builder = ListingBuilder()
        for sample in samples:
            builder.append(sample)
        return builder.build()


def append_widening(values: array, value: int, wider: str) -> array:
    """``values`` with ``value`` appended; when it does not fit ``values``' type, a copy of
    type ``wider`` with it appended (once: later values fit the wider type)."""
    try:
        values.append(value)
    except OverflowError:
        values = array(wider, values)
        values.append(value)
    return values


class ListingBuilder:
    """Collects ``(path, label)`` samples one at a time, keeping none of them: the folder
    scan ``append``-s into it instead of into a list; ``build`` gives the ``Listing``."""

    def __init__(self) -> None:
        self._dirs: dict[str, int] = {}
        self._last: tuple[str, int] = ("", -1)  # consecutive inputs share their folder
        self._names = bytearray()
        self._ends, self._dir_of, self._labels = array("I"), array("H"), array("h")

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, sample: tuple[str, int]) -> None:
        path, label = sample
        folder, name = _split(path)
        if folder != self._last[0]:
            self._last = (folder, self._dirs.setdefault(folder, len(self._dirs)))
        self._names += os.fsencode(name)
        self._ends = append_widening(self._ends, len(self._names), "q")
        self._dir_of = append_widening(self._dir_of, self._last[1], "i")
        self._labels = append_widening(self._labels, label, "i")

    def build(self) -> Listing:
        """The listing (it takes over the buffers: no copy, so no transient double)."""
        return Listing(tuple(self._dirs), self._names, self._ends, self._dir_of,
                       self._labels)
