"""How the pipelines' helper processes are made: fork where the platform has it.

A process started by ``spawn`` (e.g. ``dino-bench``'s per-backend child) makes its own
children by ``spawn`` too, by default. A torch DataLoader worker made that way ends through
interpreter finalisation, while its queue's feeder thread may still be handing a prefetched
batch's shared memory over (``share_fd``): that thread is then torn down inside libtorch and
the worker aborts ("terminate called without an active exception"; seen in the pipeline
benchmark's PIL rows). A forked worker leaves by ``os._exit`` and starts without importing
anything again; so the loaders and converters ask for fork explicitly, whoever started them.
"""
from __future__ import annotations

import multiprocessing


def worker_context():
    """The multiprocessing context for worker processes: fork where available, else spawn.
    Shared objects handed to the workers (a ``Value``, a queue) must come from it too."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
