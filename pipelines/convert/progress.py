"""The progress bar of a conversion: images/s and ETA over the whole job, kept/skipped."""
from __future__ import annotations

import sys
import time


class Progress:
    """A tqdm bar over ``total`` inputs (silent when ``enabled`` is False) that also keeps
    the counts and the wall time for the final line."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.kept = self.skipped = 0
        self.seconds = 0.0
        self._bar = None
        self._t0 = 0.0

    def __enter__(self) -> "Progress":
        self._t0 = time.perf_counter()
        if self.enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=self.desc, unit="img", file=sys.stderr,
                             dynamic_ncols=True, smoothing=0.05)
        return self

    def update(self, kept: int = 0, skipped: int = 0) -> None:
        self.kept += kept
        self.skipped += skipped
        if self._bar is not None:
            self._bar.update(kept + skipped)
            if self.skipped:
                self._bar.set_postfix(skipped=self.skipped, refresh=False)

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self._bar is not None:
            self._bar.close()
