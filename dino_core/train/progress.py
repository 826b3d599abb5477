"""What a training run reports: tensorboard scalars, a metrics.jsonl, a console progress bar."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("dino_core.train")


class ProgressLogger:
    """Rank 0 writes; other ranks hold a disabled logger (every method is a no-op)."""

    def __init__(self, out: Path, enabled: bool, progress: bool, total: int):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.metrics = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(out / "tb"))
        self.metrics = open(out / "metrics.jsonl", "a")
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="dino-train", unit="it", file=sys.stderr,
                            dynamic_ncols=True)

    def log(self, iteration: int, epoch: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, iteration)
        self.metrics.write(json.dumps({"iteration": iteration, "epoch": epoch,
                                       **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.metrics.flush()
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch, loss=f"{scalars['loss']:.4f}",
                                 img_s=f"{scalars['images_per_s']:.1f}",
                                 wait=f"{100 * scalars['data_wait_share']:.0f}%")
        else:
            log.info("it %d epoch %d loss %.4f lr %.2e img/s %.1f data wait %.0f%%", iteration,
                     epoch, scalars["loss"], scalars["lr"], scalars["images_per_s"],
                     100 * scalars["data_wait_share"])

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
