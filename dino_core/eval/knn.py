"""Weighted k-NN classification on frozen features (Wu et al. 2018, as used by DINO).

Features are L2-normalised; similarity is the cosine; each of the k nearest training samples
votes for its class with weight exp(sim / T), T = 0.07; k in {10, 20, 100, 200} (clipped to
the bank size). Top-1 and top-5 accuracies in percent.

Scale: the training bank (1.28M x D for ImageNet) stays on the CPU and streams to the device
ONCE, ``bank_chunk`` rows at a time; the queries (the val set) sit on the device, are scored
``query_chunk`` rows at a time against each bank chunk, and a running top-k [M, k] is merged
after every chunk. Device memory is O(M*D + M*k + bank_chunk*D + query_chunk*bank_chunk).
``topk_bruteforce`` is the obviously-correct twin (one full similarity matrix and a sort).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .datasets import open_eval_splits
from .features import (FeatureFn, FeatureSet, comm_device, extract_features, rank_and_world,
                       save_features)

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07


@torch.no_grad()
def topk_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                    device: str | torch.device = "cpu", query_chunk: int = 1024,
                    bank_chunk: int | None = 1 << 17) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of every query among the bank rows, streaming the bank.

    bank [N, D] and queries [M, D] may live on the CPU (any float dtype, not normalised).
    Returns (similarities [M, k'], bank indices [M, k']) on the CPU, sorted by decreasing
    similarity, k' = min(k, N). ``bank_chunk=None`` moves the whole bank at once.
    """
    device = torch.device(device)
    n, m = bank.shape[0], queries.shape[0]
    k = min(k, n)
    if k < 1:
        raise ValueError(f"k-NN needs k >= 1 and a non-empty bank (k={k}, bank size {n})")
    bank_chunk = n if bank_chunk is None else bank_chunk
    q = F.normalize(queries.to(device, torch.float32), dim=1)                  # (M, D)
    best_sim = torch.full((m, k), float("-inf"), device=device)                 # (M, k)
    best_idx = torch.zeros((m, k), dtype=torch.int64, device=device)            # (M, k)
    for b0 in range(0, n, bank_chunk):
        chunk = bank[b0:b0 + bank_chunk]
        chunk = F.normalize(chunk.to(device, torch.float32, non_blocking=True), dim=1)  # (C, D)
        kc = min(k, chunk.shape[0])
        for q0 in range(0, m, query_chunk):
            sim = q[q0:q0 + query_chunk] @ chunk.T                               # (Q, C)
            top_sim, top_idx = sim.topk(kc, dim=1)                               # (Q, kc)
            cand_sim = torch.cat((best_sim[q0:q0 + query_chunk], top_sim), dim=1)
            cand_idx = torch.cat((best_idx[q0:q0 + query_chunk], top_idx + b0), dim=1)
            keep_sim, keep = cand_sim.topk(k, dim=1)                             # (Q, k)
            best_sim[q0:q0 + query_chunk] = keep_sim
            best_idx[q0:q0 + query_chunk] = cand_idx.gather(1, keep)
    return best_sim.cpu(), best_idx.cpu()  # host sync: once, at the end


@torch.no_grad()
def topk_bruteforce(bank: torch.Tensor, queries: torch.Tensor, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``topk_neighbours``: the full [M, N] cosine matrix, sorted, first k columns."""
    sim = F.normalize(queries.double(), dim=1) @ F.normalize(bank.double(), dim=1).T
    order = sim.argsort(dim=1, descending=True)[:, :k]
    return sim.gather(1, order).float(), order


def weighted_votes(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                   temperature: float = TEMPERATURE) -> torch.Tensor:
    """Class scores [M, C]: the sum of exp(sim / T) over neighbours of each class.

    sims, neighbour_labels: [M, k] similarities and labels of the k nearest neighbours.
    """
    weights = (sims.float() / temperature).exp()
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent of class scores [M, C] against labels [M]."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices                   # (M, 5)
    hit = top == labels[:, None]
    return (100.0 * hit[:, 0].double().mean().item(),
            100.0 * hit.any(dim=1).double().mean().item())


def knn_classify(train: FeatureSet, val: FeatureSet, ks: Sequence[int] = KS,
                 temperature: float = TEMPERATURE, device: str | torch.device = "cpu",
                 query_chunk: int = 1024, bank_chunk: int | None = 1 << 17,
                 num_classes: int | None = None) -> dict[str, dict[int, float]]:
    """Weighted k-NN accuracy of ``val`` against the ``train`` bank for every k in ``ks``.

    One top-max(k) search serves every k (the neighbours come sorted). Returns
    ``{"top1": {k: %}, "top5": {k: %}, "k_used": {k: min(k, N)}}``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if train.features.shape[1] != val.features.shape[1]:
        raise ValueError(f"train features have dimension {train.features.shape[1]} but val "
                         f"features {val.features.shape[1]}")
    if num_classes is None:
        num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    sims, idx = topk_neighbours(train.features, val.features, max(ks), device, query_chunk,
                                bank_chunk)
    neighbour_labels = train.labels[idx]                                        # (M, k)
    results: dict[str, dict[int, float]] = {"top1": {}, "top5": {}, "k_used": {}}
    for k in ks:
        used = min(k, sims.shape[1])
        scores = weighted_votes(sims[:, :used], neighbour_labels[:, :used], num_classes,
                                temperature)
        results["top1"][k], results["top5"][k] = topk_accuracy(scores, val.labels)
        results["k_used"][k] = used
    return results


def _broadcast_results(results: dict[str, dict[int, float]], ks: Sequence[int]
                       ) -> dict[str, dict[int, float]]:
    """Rank 0's results on every rank (one tiny tensor broadcast)."""
    rank, world = rank_and_world()
    if world == 1:
        return results
    names = ("top1", "top5", "k_used")
    table = torch.zeros(len(names), len(ks), dtype=torch.float64, device=comm_device())
    if rank == 0:
        table.copy_(torch.tensor([[results[n][k] for k in ks] for n in names],
                                 dtype=torch.float64))
    dist.broadcast(table, src=0)
    rows = table.cpu().tolist()
    out = {n: dict(zip(ks, row)) for n, row in zip(names, rows)}
    out["k_used"] = {k: int(v) for k, v in out["k_used"].items()}
    return out


def knn_accuracy(backbone: FeatureFn, data_root: str | Path, device: str | torch.device,
                 batch_size: int = 64, ks: Sequence[int] = KS,
                 temperature: float = TEMPERATURE, num_workers: int = 2,
                 dump_dir: str | Path | None = None, query_chunk: int = 1024,
                 bank_chunk: int | None = 1 << 17) -> dict[str, dict[int, float]]:
    """Extract train/ and val/ features of ``data_root`` with ``backbone`` and run k-NN.

    backbone: images [B, 3, 224, 224] -> CLS features [B, D] (the teacher backbone, in eval
    mode). Under torch.distributed every rank extracts its shard; rank 0 classifies and every
    rank returns the same ``{"top1": {k: %}, "top5": {k: %}, "k_used": {k: n}}``. Every
    rank of an initialised process group must call it.
    """
    train_ds, val_ds, classes = open_eval_splits(data_root)
    was_training = getattr(backbone, "training", False)
    if was_training:
        backbone.eval()
    try:
        train = extract_features(backbone, train_ds, device, batch_size, num_workers)
        val = extract_features(backbone, val_ds, device, batch_size, num_workers)
    finally:
        if was_training:
            backbone.train()
    rank, _ = rank_and_world()
    results: dict[str, dict[int, float]] = {}
    if rank == 0:
        if dump_dir is not None:
            save_features(dump_dir, train, val)
        results = knn_classify(train, val, ks, temperature, device, query_chunk, bank_chunk,
                               num_classes=len(classes))
    return _broadcast_results(results, list(ks))
