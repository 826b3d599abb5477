"""Reading image files: what counts as a usable image, and what to do with one that is not.

``open_rgb`` decodes one file (decompression bombs refused); ``SampleReader`` reads the
samples of a scanned folder by index and replaces a file that fails to decode, the same way
for the reference backend and the evaluation datasets; ``describe_error`` words a decode
error the same way from run to run.
"""
from __future__ import annotations

import logging
import re
import warnings

from PIL import Image

from .folder import DatasetError

log = logging.getLogger(__name__)

_BUFFER_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def open_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully as RGB; raises on anything unusable (bombs included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")


def describe_error(e: BaseException) -> str:
    """``Type: message`` of a decode error, without the in-memory buffer's address that PIL
    puts in it, so reasons are readable and identical from run to run."""
    return f"{type(e).__name__}: {_BUFFER_REPR.sub('', str(e))}"


class SampleReader:
    """Decodes samples by index; a file that fails is replaced by the next one that decodes.

    The replacement for sample i is the first decodable sample among i+1, i+2, ... (mod n),
    so the substitution is deterministic and usually keeps the class (samples are sorted by
    class). Each failing file is logged once per process. Returns (RGB image, its label).
    """

    def __init__(self, samples: list[tuple[str, int]], max_tries: int = 64) -> None:
        if not samples:
            raise DatasetError("no samples to read")
        self.samples = samples
        self.max_tries = min(max_tries, len(samples))
        self._reported: set[str] = set()

    def read(self, index: int) -> tuple[Image.Image, int]:
        failures = []
        for k in range(self.max_tries):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                return open_rgb(path), label
            except Exception as e:  # hostile files raise a zoo of types
                failures.append(path)
                if path not in self._reported:
                    self._reported.add(path)
                    log.warning("cannot decode %s (%s: %s); using the next sample instead",
                                path, type(e).__name__, e)
        raise DatasetError(f"{len(failures)} consecutive samples failed to decode, starting at "
                           f"{failures[0]}: is the dataset readable?")
