"""``manifest.json``: what a conversion produced, written last, so its presence marks a
finished dataset. The DALI and FFCV backends read it before anything else."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_write_bytes


@dataclass
class Manifest:
    """What a conversion produced: written last, so its presence marks a finished dataset."""

    format: str
    classes: list[str]
    num_samples: int = 0
    shards: list[dict] = field(default_factory=list)   # {"name", "count", "sha256", ...}
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    options: dict = field(default_factory=dict)
    labelled: bool = True      # False: an unlabeled folder, every label is -1
    stored: dict = field(default_factory=dict)  # {"passed"|"reencoded"|"raw": count}
    seconds: float = field(default=0.0, compare=False)  # wall time (not saved)
    label_counts: dict = field(default_factory=dict)  # {"label": stored samples}

    def save(self, path: str | Path) -> None:
        """Write it atomically; the wall time stays out, so the same input and options
        give a byte-identical manifest (an interrupted run resumes to the same files)."""
        content = {k: v for k, v in asdict(self).items() if k != "seconds"}
        atomic_write_bytes(path, json.dumps(content, indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no manifest at {path}: not a converted dataset, or the "
                                    "conversion did not finish (run dino-convert again)")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"manifest {path} is corrupt: {e}") from None
