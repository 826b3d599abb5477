"""Iterate the reference loader forever in a process of its own, for Ctrl-C tests.

    python -m tests.reliability.loader_child DATA

Prints one JSON line ``{"pid", "workers"}`` once the first batch has arrived (the
DataLoader worker processes of epoch 0 are up; each epoch starts new ones), then keeps
iterating epochs until interrupted. On
Ctrl-C it prints "interrupted" and exits 130, as dino-train does; the loader is left to
its own clean-up (generator ``finally`` and interpreter exit), which is what is tested.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import psutil

from pipelines import build_loader
from tests.reliability.checks import PLAIN_SPEC


def main(data: str) -> int:
    # A test suite started as a background job of a non-interactive shell (``cmd &``)
    # runs with SIGINT ignored, which this process would inherit; it stands in for a
    # program in a terminal, so it takes Ctrl-C as Python does by default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loader = build_loader(data, "reference", batch_size=2, spec=PLAIN_SPEC, num_workers=2,
                          shuffle=True, drop_last=True)
    try:
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for i, _batch in enumerate(loader):
                if epoch == 0 and i == 0:
                    workers = [p.pid for p in psutil.Process().children()]
                    print(json.dumps({"pid": os.getpid(), "workers": workers}), flush=True)
            epoch += 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
