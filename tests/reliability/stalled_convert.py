"""``dino-convert`` that stops in the middle, so that a test can kill it there.

    python -m tests.reliability.stalled_convert IMAGES MARKER [dino-convert arguments]

Each worker process converts its first IMAGES inputs as usual, then, at the next one, writes
the file MARKER and stalls (sleeps) until it is killed. Only the per-image work is patched
(``prepare.prepare_image``, which both converters call in their worker processes; they are
forked and inherit the patch); everything else is the real converter, so a SIGKILL lands
where a crash of a long conversion would. The test waits for MARKER, not for a time: where
the kill lands does not depend on how loaded the machine is.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from pipelines.convert import prepare
from pipelines.convert.cli import main


def stalling(fn, images: int, marker: Path):
    done = 0

    @functools.wraps(fn)
    def stall_after(*args, **kwargs):
        nonlocal done
        if done == images:
            marker.write_text("stalled")
            while True:
                time.sleep(60)
        done += 1
        return fn(*args, **kwargs)
    return stall_after


if __name__ == "__main__":
    prepare.prepare_image = stalling(prepare.prepare_image, int(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
