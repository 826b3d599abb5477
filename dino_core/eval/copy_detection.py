"""Copy detection on Copydays (Douze et al. 2009), as the DINO paper runs it.

Layout (the user downloads it)::

    ROOT/original/<gggg>00.jpg      the 157 originals; gggg is the image's group number
    ROOT/strong/<gggg><vv>.jpg      the 229 strong attacks (print-and-scan, paint, crops...)
    [ROOT/jpegqual/<q>/, ROOT/crops/<pct>/: other subsets, not used by the paper's figure]

Optional: a folder of distractor images (the paper: 10k random YFCC100M images) added to
the database, and ``--whitening-data``, a separate folder (the paper: 20k other YFCC100M
images) on which the whitening is learned.

Protocol (facts): images resized to 320 x 320 (bicubic); descriptor = the last block's CLS
token concatenated with the GeM (p = 4) pooling of its patch tokens (clamped at 1e-6),
[2D]; whitened (``whitening.py``) when a whitening set is given; L2-normalised; database =
originals + distractors ranked by cosine similarity; the positives of a strong query are the
originals whose names share its first four characters; AP over the first 20 results
(``ranking_metrics``); mAP over the 229 strong queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.folder import DatasetError

from .features import extract_features, rank_and_world, save_tensors
from .ranking_metrics import mean_average_precision, rank_database
from .datasets import ImageList
from .retrieval import crop_to_patches
from .whitening import fit_whitening

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GEM_P = 4.0
TOP = 20  # results searched per query (the Holidays/Copydays evaluation's cut)
GROUP_CHARS = 4  # a Copydays name starts with its 4-digit group number


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; an error if none."""
    if not folder.is_dir():
        raise DatasetError(f"{what} folder {folder} is missing")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{what} folder {folder} holds no image")
    return files


@dataclass(frozen=True)
class Copydays:
    originals: list[Path]
    queries: list[Path]           # the strong subset
    positives: list[np.ndarray]   # per query: indices into originals


def open_copydays(root: str | Path) -> Copydays:
    """ROOT/original and ROOT/strong, every strong image matched to its original(s)."""
    root = Path(root)
    originals = list_images(root / "original", "Copydays originals")
    queries = list_images(root / "strong", "Copydays strong subset")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(originals):
        groups.setdefault(p.name[:GROUP_CHARS], []).append(i)
    positives = []
    for q in queries:
        if q.name[:GROUP_CHARS] not in groups:
            raise DatasetError(f"strong image {q} has no original: no file in "
                               f"{root / 'original'} starts with {q.name[:GROUP_CHARS]!r}")
        positives.append(np.asarray(groups[q.name[:GROUP_CHARS]], dtype=np.int64))
    return Copydays(originals, queries, positives)


def gem(tokens: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over tokens [B, N, D] -> [B, D]: mean(clamp(x, eps)^p)^(1/p)."""
    return tokens.clamp(min=eps).pow(p).mean(dim=1).pow(1.0 / p)


def cls_gem_descriptor(backbone: torch.nn.Module):
    """images [B, 3, H, W] -> [B, 2D]: last-block CLS token and GeM of its patch tokens."""
    def features(x: torch.Tensor) -> torch.Tensor:
        tokens = backbone.get_intermediate_layers(crop_to_patches(x, backbone.patch_size),
                                                  n=1)[0].float()             # (B, 1+N, D)
        return torch.cat((tokens[:, 0], gem(tokens[:, 1:])), dim=1)
    return features


@torch.no_grad()
def describe(backbone: torch.nn.Module, paths: list[Path], device: str | torch.device,
             image_size: int = 320, batch_size: int = 16, num_workers: int = 2) -> torch.Tensor:
    """Raw (unwhitened, unnormalised) descriptors [len(paths), 2D] on every rank."""
    ds = ImageList(paths, square=image_size)
    return extract_features(cls_gem_descriptor(backbone), ds, device, batch_size,
                            num_workers).features


def copy_detection_map(queries: torch.Tensor, database: torch.Tensor,
                       positives: list[np.ndarray], whitening_set: torch.Tensor | None = None,
                       whitening_dim: int | None = None, top: int | None = TOP) -> float:
    """mAP % of raw descriptors: whitening learned on ``whitening_set`` (if any) applied to
    both sides, L2 normalisation, cosine ranking, AP over the first ``top`` results."""
    if whitening_set is not None:
        w = fit_whitening(whitening_set, whitening_dim)
        queries, database = w.apply(queries), w.apply(database)
    ranking = rank_database(F.normalize(queries, dim=1), F.normalize(database, dim=1))
    return 100 * mean_average_precision(ranking, positives, max_rank=top)[0]


@dataclass(frozen=True)
class CopyDetectionResult:
    strong_map: float
    queries: int
    originals: int
    distractors: int
    whitening_images: int


def evaluate_copy_detection(backbone: torch.nn.Module, data: Copydays,
                            device: str | torch.device, distractors: list[Path] = (),
                            whitening: list[Path] = (), image_size: int = 320,
                            batch_size: int = 16, num_workers: int = 2,
                            whitening_dim: int | None = None, top: int | None = TOP,
                            dump_dir: str | Path | None = None) -> CopyDetectionResult:
    """Describe queries, database (originals + distractors) and the whitening set, then score.
    Every rank of an initialised process group must call it; all return the same result."""
    def run(paths):
        return describe(backbone, list(paths), device, image_size, batch_size, num_workers)

    queries, database = run(data.queries), run(list(data.originals) + list(distractors))
    whit = run(whitening) if whitening else None
    if dump_dir is not None and rank_and_world()[0] == 0:
        dumps = {"copydays_queries": queries, "copydays_database": database}
        if whit is not None:
            dumps["copydays_whitening"] = whit
        save_tensors(dump_dir, dumps)
    mean_ap = copy_detection_map(queries, database, data.positives, whit, whitening_dim, top)
    return CopyDetectionResult(mean_ap, len(data.queries), len(data.originals),
                               len(distractors), len(whitening))
