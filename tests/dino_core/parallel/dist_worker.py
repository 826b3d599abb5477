"""Train a few steps under torchrun (or alone) and save this rank's teacher for comparison.

    python -m tests.dino_core.parallel.dist_worker OUT_DIR KEY=VALUE ...
"""
import sys
from pathlib import Path

import torch

from dino_core.parallel import env as distributed
from dino_core.config import load_config
from dino_core.train.loop import _train_epochs
from dino_core.train.run import build_run


def main(out: str, *overrides: str) -> None:
    cfg = load_config(None, [f"output_dir={out}", *overrides])
    run = build_run(cfg)
    try:
        _train_epochs(run, Path(out))
        center = run.recipe.state_dict()["dino_loss"]["center"]  # folds a pending update in
        torch.save({"teacher": run.teacher.state_dict(), "center": center,
                    "world_size": run.env.world_size},
                   Path(out) / f"teacher_rank{run.env.rank}.pt")
    finally:
        run.loader.close()
        distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
