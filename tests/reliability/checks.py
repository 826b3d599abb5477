"""Checks the reliability tests share: which file an executor delivered, and reports."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.spec import AugmentationSpec, ColorJitterSpec, ViewSpec
from tests.reliability.corpus import Case, Corpus

REPO = Path(__file__).resolve().parents[2]

# Tiny views and every photometric op off: a solid image stays its own colour in every view.
PLAIN_SPEC = AugmentationSpec(
    global_views=(ViewSpec(16, (0.3, 1.0), 0.0, 0.0), ViewSpec(16, (0.3, 1.0), 0.0, 0.0)),
    local_view=ViewSpec(8, (0.1, 0.4), 0.0, 0.0), local_crops=1,
    jitter=ColorJitterSpec(p=0.0), grayscale_p=0.0)


MAX_SPREAD = 4.0  # of a solid view, after resampling and JPEG round trips


def view_stats(view: torch.Tensor, spec: AugmentationSpec = PLAIN_SPEC
               ) -> tuple[np.ndarray, float]:
    """Normalised views [B, 3, S, S] -> (float64 [B, 3] mean RGB in 0..255 of each view,
    largest max-min spread of a channel within one view)."""
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    rgb = (view.to(torch.float64) * std + mean) * 255.0
    spread = (rgb.amax((2, 3)) - rgb.amin((2, 3))).max().item()
    return rgb.mean((2, 3)).numpy(), spread


def view_colors(view: torch.Tensor, spec: AugmentationSpec = PLAIN_SPEC) -> np.ndarray:
    """The RGB colour [B, 3] of each solid view; asserts that each view is solid (an
    executor that mixed two images, or cropped outside one, fails here)."""
    colors, spread = view_stats(view, spec)
    assert spread <= MAX_SPREAD, f"a view is not solid (spread {spread:.1f}): pixels were mixed"
    return colors


def jpeg_color(data: bytes) -> np.ndarray:
    """Mean RGB of an encoded image (a stored sample of a converted dataset)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)


def substitutes(corpus: Corpus, scanned: list[str]) -> list[Case]:
    """What a substituting reader delivers for each scanned path, in order: the file itself
    when good, else the first good file after it (cyclically), as the reference loader's
    ``SampleReader`` and the DALI feed replace samples that fail to decode."""
    good = {str(c.path) for c in corpus.good}
    out = []
    for i in range(len(scanned)):
        j = next(k % len(scanned) for k in range(i, i + len(scanned))
                 if scanned[k % len(scanned)] in good)
        out.append(corpus.case(scanned[j]))
    return out


def unreported(corpus: Corpus, lines: list[str]) -> list[str]:
    """Bad cases that no report line names with the expected reason (empty when all are)."""
    return [f"{c.path} ({c.kind}): expected /{c.reason}/" for c in corpus.bad
            if not any(c.matches(line) for line in lines)]


def assert_delivered_exactly_the_good(corpus: Corpus, delivered: list[tuple[int, np.ndarray]]
                                      ) -> None:
    """``delivered`` = [(label, RGB)] of a converted dataset: each good file exactly once,
    with its own label; nothing else."""
    seen = []
    for label, rgb in delivered:
        case = corpus.identify(rgb)
        assert label == case.label, f"{case.path} delivered with label {label}, not {case.label}"
        seen.append(case.path)
    assert sorted(seen) == sorted(c.path for c in corpus.good), "good files lost or duplicated"


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 300,
               cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ffcv_epochs(*datasets: str | Path, watchdog: float | None = None
                ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """One FFCV epoch over each dataset in turn, in one child process (see ffcv_child.py):
    (the finished process, the results of the epochs that ended)."""
    import json

    extra = ["--watchdog", str(watchdog)] if watchdog else []
    proc = run_module("tests.reliability.ffcv_child", *extra, *map(str, datasets))
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, results


def error_lines(text: str) -> list[str]:
    """Non-empty lines of ``text`` that are not logging chatter (time-stamped INFO lines)."""
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    return [line for line in text.splitlines() if line.strip() and not stamp.match(line)]


def read_beton(path: str | Path) -> list[tuple[int, np.ndarray]]:
    """[(label, mean RGB)] of every sample of a .beton, read with FFCV's ``Reader`` (header,
    metadata, allocation table) and decoded with PIL: a plain twin of FFCV's loader."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    image_key = f"f{reader.field_names.index('image')}"
    label_key = f"f{reader.field_names.index('label')}"
    sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    raw = np.fromfile(path, dtype=np.uint8)
    out = []
    for meta in reader.metadata:
        image = meta[image_key]
        ptr, w, h = int(image["data_ptr"]), int(image["width"]), int(image["height"])
        if image["mode"] == 0:  # FFCV's IMAGE_MODES["jpg"]
            rgb = jpeg_color(raw[ptr:ptr + sizes[ptr]].tobytes())
        else:  # raw uint8 [h, w, 3]
            rgb = raw[ptr:ptr + w * h * 3].reshape(-1, 3).astype(np.float64).mean(0)
        out.append((int(meta[label_key]), rgb))
    return out
