"""Iterate the FFCV executor over one dataset in a process of its own; print JSON.

    python -m tests.reliability.ffcv_child [--watchdog SECONDS] DATA [DATA ...]

For each DATA in turn: build ``build_loader(DATA, "ffcv")`` with the plain spec (every
photometric op off), iterate one epoch in order, and collect labels, the mean colour of
every view and the largest colour spread within a view (``checks.view_stats``), or the
DatasetError message. Prints one JSON line ``{"labels", "colors", "spread", "error"}`` per
DATA as soon as its epoch is over.

Why a separate process: in this FFCV backend a second loader that iterates in the same
process hangs forever (see test_faults.py), so a test that iterates one in-process could
hang the whole suite. A watchdog ends the process with status 3 if one epoch takes more
than SECONDS (default WATCHDOG_S), so a hang is reported instead of waited on.
"""
from __future__ import annotations

import json
import os
import sys
import threading

# a hang guard, not a speed check: numba compiles the op in the first epoch (90 s was seen
# at load 10 on 2 cores)
WATCHDOG_S = 300.0


def _epoch(data: str) -> dict:
    from pipelines import build_loader
    from pipelines.folder import DatasetError
    from tests.reliability.checks import PLAIN_SPEC, view_stats

    labels, colors, spread, error = [], [], 0.0, None
    try:
        loader = build_loader(data, "ffcv", batch_size=4, spec=PLAIN_SPEC, num_workers=1,
                              shuffle=False, drop_last=False)
        try:
            for batch in loader:
                labels += batch.labels.tolist()
                stats = [view_stats(v) for v in batch.views]
                colors.append([c.tolist() for c, _ in stats])
                spread = max([spread] + [s for _, s in stats])
        finally:
            loader.close()
    except DatasetError as e:
        error = f"DatasetError: {e}"
    # colors: [batch][view][sample] -> [view][sample]
    per_view = [[c for batch in colors for c in batch[v]] for v in range(len(colors[0]))
                ] if colors else []
    return {"labels": labels, "colors": per_view, "spread": spread, "error": error}


def _hung(data: str, seconds: float) -> None:
    print(f"watchdog: one epoch over {data} took more than {seconds:g} s (hung)",
          file=sys.stderr, flush=True)
    os._exit(3)


def main(argv: list[str]) -> int:
    seconds = WATCHDOG_S
    if argv[:1] == ["--watchdog"]:
        seconds, argv = float(argv[1]), argv[2:]
    for data in argv:
        timer = threading.Timer(seconds, _hung, args=(data, seconds))
        timer.daemon = True
        timer.start()
        print(json.dumps(_epoch(data)), flush=True)
        timer.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
