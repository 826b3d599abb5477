"""``dino-train`` under torchrun, with rank 1 killed (SIGKILL) once after the first checkpoint.

    python -m torch.distributed.run ... -m tests.dino_core.parallel.elastic_worker MARKER -- ARGS...

The marker file makes the kill happen once: after torchrun's elastic agent restarts the
group, every rank must resume from OUTPUT_DIR/checkpoint.pth and finish.
"""
import os
import signal
import sys
import threading
import time
from pathlib import Path

from dino_core.cli.train import main


def kill_once(marker: Path, checkpoint: Path) -> None:
    while not checkpoint.exists():
        time.sleep(0.02)
    if not marker.exists():
        marker.write_text("killed once\n")
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    marker, args = Path(sys.argv[1]), sys.argv[3:]
    out = Path(args[args.index("--output-dir") + 1])
    if os.environ.get("RANK") == "1" and not marker.exists():
        threading.Thread(target=kill_once, args=(marker, out / "checkpoint.pth"),
                         daemon=True).start()
    sys.exit(main(args))
