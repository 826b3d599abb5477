"""Image retrieval on revisited Oxford / Paris (Radenovic et al. 2018), as the DINO paper runs it.

Layout (the user downloads it, see revisitop)::

    ROOT/<name>/jpg/<image>.jpg         every database and query image
    ROOT/<name>/gnd_<name>.pkl          {"imlist": [...], "qimlist": [...], "gnd": [
                                          {"easy": [...], "hard": [...], "junk": [...],
                                           "bbx": [x0, y0, x1, y1]}, ...]}  (one per query)

``gnd_<name>.json`` with the same structure is read too. The pickle is read by an unpickler
that admits plain containers, numbers, strings and numpy arrays only (nothing that runs code).

Protocol (facts): each image is shrunk so its longer side is at most ``image_size`` (aspect
kept; 224 for Oxford, 512 for Paris in the upstream commands); its feature is the CLS output
of the last block, averaged over the scales 1, 1/sqrt(2), 1/2 (bilinear) when multi-scale,
L2-normalised; the database is ranked by cosine similarity. Medium: positives easy + hard,
junk ignored; hard: positives hard, junk and easy ignored. mAP as in ``ranking_metrics``.
Upstream DINO feeds the whole query image; ``crop_queries`` crops it to its box first, as the
revisited protocol defines the queries.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.folder import DatasetError

from .datasets import ImageList
from .features import FeatureFn, extract_features, rank_and_world, save_tensors
from .ranking_metrics import mean_average_precision, rank_database

SCALES = (1.0, 2 ** -0.5, 0.5)
PROTOCOLS = ("medium", "hard")
_NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_ground_truth(path: Path) -> dict:
    """The ground-truth dict of a gnd_<name>.pkl / .json file, or a DatasetError naming it."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        with open(path, "rb") as f:
            return _PlainUnpickler(f).load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DatasetError(f"ground-truth file {path} is unreadable ({type(e).__name__}: "
                           f"{e})") from None


@dataclass(frozen=True)
class QueryTruth:
    """Database indices of one query's easy / hard / junk images, and its box (x0, y0, x1, y1)."""

    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray
    bbx: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class RetrievalBenchmark:
    name: str
    image_dir: Path
    images: list[str]
    queries: list[str]
    truth: list[QueryTruth]

    def protocol(self, which: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(positives, junk) per query under the medium or hard protocol."""
        if which == "medium":
            return ([np.concatenate((t.easy, t.hard)) for t in self.truth],
                    [t.junk for t in self.truth])
        if which == "hard":
            return ([t.hard for t in self.truth],
                    [np.concatenate((t.junk, t.easy)) for t in self.truth])
        raise ValueError(f"unknown protocol {which!r}; choose from {', '.join(PROTOCOLS)}")


def _indices(entry: dict, key: str, n: int, where: str) -> np.ndarray:
    values = np.asarray(entry.get(key, []), dtype=np.int64).ravel()
    bad = values[(values < 0) | (values >= n)]
    if bad.size:
        raise DatasetError(f"{where}: '{key}' holds index {int(bad[0])}, outside the {n} "
                           "database images of 'imlist'")
    return values


def open_revisited(root: str | Path, name: str) -> RetrievalBenchmark:
    """Read and check ROOT/<name>: the ground truth must match the images on disk."""
    base = Path(root) / name
    image_dir = base / "jpg"
    gnd_path = next((p for p in (base / f"gnd_{name}.pkl", base / f"gnd_{name}.json")
                     if p.is_file()), None)
    if not image_dir.is_dir() or gnd_path is None:
        raise DatasetError(f"retrieval dataset {base} must hold jpg/ and gnd_{name}.pkl (or "
                           f".json); {'jpg/' if not image_dir.is_dir() else f'gnd_{name}.pkl'}"
                           " is missing")
    cfg = load_ground_truth(gnd_path)
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise DatasetError(f"ground-truth file {gnd_path} must be a dict with 'imlist', "
                           "'qimlist' and 'gnd'")
    images, queries = list(map(str, cfg["imlist"])), list(map(str, cfg["qimlist"]))
    gnd = cfg["gnd"]
    if len(gnd) != len(queries):
        raise DatasetError(f"ground-truth file {gnd_path} has {len(gnd)} 'gnd' entries for "
                           f"{len(queries)} queries in 'qimlist'")
    missing = [n for n in dict.fromkeys(images + queries)
               if not (image_dir / f"{n}.jpg").is_file()]
    if missing:
        raise DatasetError(f"ground-truth file {gnd_path} does not match the images: "
                           f"{image_dir / (missing[0] + '.jpg')} is missing "
                           f"({len(missing)} of {len(images) + len(queries)} listed images)")
    truth = []
    for q, entry in enumerate(gnd):
        where = f"{gnd_path}, query {q} ({queries[q]})"
        box = entry.get("bbx")
        truth.append(QueryTruth(*(_indices(entry, k, len(images), where)
                                  for k in ("easy", "hard", "junk")),
                                tuple(float(v) for v in box) if box is not None else None))
    return RetrievalBenchmark(name, image_dir, images, queries, truth)


def crop_to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """images [B, 3, H, W] cropped at the bottom/right to multiples of the patch size (what a
    strided patch convolution ignores anyway)."""
    h, w = x.shape[-2] // patch * patch, x.shape[-1] // patch * patch
    if h == 0 or w == 0:
        raise ValueError(f"an image of {x.shape[-1]}x{x.shape[-2]} px is smaller than one "
                         f"{patch}px patch")
    return x[..., :h, :w]


def multiscale_cls(backbone: torch.nn.Module, scales: Sequence[float] = SCALES) -> FeatureFn:
    """images [B, 3, H, W] -> L2-normalised mean over ``scales`` of the CLS output [B, D]."""
    def features(x: torch.Tensor) -> torch.Tensor:
        total = 0
        for s in scales:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                align_corners=False)
            total = total + backbone(crop_to_patches(xs, backbone.patch_size)).float()
        return F.normalize(total / len(scales), dim=1)
    return features


def retrieval_map(queries: torch.Tensor, database: torch.Tensor,
                  bench: RetrievalBenchmark) -> dict[str, float]:
    """{"medium": mAP %, "hard": mAP %} of query features [Q, D] against database [N, D]."""
    if queries.shape[0] != len(bench.queries) or database.shape[0] != len(bench.images):
        raise ValueError(f"{queries.shape[0]} query / {database.shape[0]} database features "
                         f"for {len(bench.queries)} queries / {len(bench.images)} images of "
                         f"{bench.name}")
    ranking = rank_database(queries, database)
    out = {}
    for which in PROTOCOLS:
        positives, junk = bench.protocol(which)
        out[which] = 100 * mean_average_precision(ranking, positives, junk)[0]
    return out


@torch.no_grad()
def extract_retrieval_features(backbone: torch.nn.Module, bench: RetrievalBenchmark,
                               device: str | torch.device, image_size: int = 224,
                               scales: Sequence[float] = SCALES, crop_queries: bool = False,
                               num_workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(query features [Q, D], database features [N, D]) on the CPU, on every rank (each
    rank extracts its share, one image at a time: sizes differ)."""
    fn = multiscale_cls(backbone, scales)
    boxes = [t.bbx for t in bench.truth] if crop_queries else None
    sets = []
    for names, b in ((bench.queries, boxes), (bench.images, None)):
        ds = ImageList([bench.image_dir / f"{n}.jpg" for n in names], max_side=image_size,
                       boxes=b)
        sets.append(extract_features(fn, ds, device, batch_size=1,
                                     num_workers=num_workers).features)
    return sets[0], sets[1]


def evaluate_retrieval(backbone: torch.nn.Module, bench: RetrievalBenchmark,
                       device: str | torch.device, image_size: int = 224,
                       scales: Sequence[float] = SCALES, crop_queries: bool = False,
                       num_workers: int = 2, dump_dir: str | Path | None = None
                       ) -> dict[str, float]:
    """Extract, rank and score; every rank returns {"medium": %, "hard": %}."""
    queries, database = extract_retrieval_features(backbone, bench, device, image_size, scales,
                                                   crop_queries, num_workers)
    if dump_dir is not None and rank_and_world()[0] == 0:
        save_tensors(dump_dir, {f"{bench.name}_query": queries,
                                f"{bench.name}_database": database})
    return retrieval_map(queries, database, bench)
