"""``dino-convert`` with every image slowed down, so that a test can kill it mid-run.

    python -m tests.reliability.slow_convert SECONDS_PER_IMAGE [dino-convert arguments]

Only the per-image work is delayed (``prepare.prepare_image``, which both converters call in
their worker processes; they are forked and inherit the patch); everything else is the real
converter, so a SIGKILL lands where a crash of a long conversion would.
"""
from __future__ import annotations

import functools
import sys
import time

from pipelines.convert import prepare
from pipelines.convert.cli import main


def slowed(fn, seconds: float):
    @functools.wraps(fn)
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return slow


if __name__ == "__main__":
    delay = float(sys.argv[1])
    prepare.prepare_image = slowed(prepare.prepare_image, delay)
    sys.exit(main(sys.argv[2:]))
