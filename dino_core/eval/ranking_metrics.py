"""Average precision of rankings, with junk images ignored: the retrieval benchmarks' mAP.

One definition serves the revisited Oxford/Paris protocol (Radenovic et al. 2018) and the
INRIA Holidays / Copydays packages, as facts: the precision-recall curve of one query is
integrated with trapezoids. Walking the ranking with junk images removed, the i-th positive
(0-based) found at position r (0-based) adds a trapezoid of width 1 / n_positives whose left
height is i / r (1 when r = 0) and right height (i + 1) / (r + 1). Positives never retrieved
(beyond ``max_rank``, when the search is cut there) add nothing. Queries without positives
are left out of the mean (the revisited protocol has a few under "hard").

Rankings are computed from similarities with a stable sort, so equal scores keep database
order and every run ranks the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def average_precision(positive_ranks: Sequence[int], n_positives: int) -> float:
    """AP of one query from the 0-based, increasing positions of its retrieved positives
    (junk already removed) and its number of positives."""
    if n_positives < 1:
        raise ValueError("average precision needs at least one positive")
    ap = 0.0
    for i, r in enumerate(positive_ranks):
        left = 1.0 if r == 0 else i / r
        right = (i + 1) / (r + 1)
        ap += (left + right) / 2 / n_positives
    return ap


def positive_ranks(ranking: np.ndarray, positives: np.ndarray, junk: np.ndarray,
                   max_rank: int | None = None) -> np.ndarray:
    """Positions of the positives in ``ranking`` (database indices, best first) once the junk
    indices are taken out; only the first ``max_rank`` entries of that list are searched."""
    is_junk = np.isin(ranking, junk)
    kept = ranking[~is_junk]
    if max_rank is not None:
        kept = kept[:max_rank]
    return np.nonzero(np.isin(kept, positives))[0]


def rank_database(queries: torch.Tensor, database: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """[Q, N] database indices by decreasing cosine similarity (inputs [Q, D], [N, D]).

    Rows are L2-normalised here; queries are scored ``chunk`` at a time (the similarity
    matrix of a large database never exists whole).
    """
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    db = torch.nn.functional.normalize(database.float(), dim=1)
    out = []
    for q0 in range(0, q.shape[0], chunk):
        sim = q[q0:q0 + chunk] @ db.T                                            # (C, N)
        # host sync: each chunk's ranking comes to the CPU for the per-query AP loop
        out.append(torch.argsort(-sim, dim=1, stable=True).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, db.shape[0]), dtype=np.int64)


def mean_average_precision(rankings: np.ndarray, positives: Sequence[np.ndarray],
                           junk: Sequence[np.ndarray] | None = None,
                           max_rank: int | None = None) -> tuple[float, np.ndarray]:
    """(mAP over queries that have positives, per-query AP [Q] with NaN for the others).

    rankings [Q, N]: database indices, best first; positives[q] / junk[q]: index arrays.
    """
    if len(positives) != rankings.shape[0]:
        raise ValueError(f"{rankings.shape[0]} rankings but ground truth for "
                         f"{len(positives)} queries")
    aps = np.full(rankings.shape[0], np.nan)
    for q, ranking in enumerate(rankings):
        pos = np.asarray(positives[q], dtype=np.int64)
        if pos.size == 0:
            continue
        bad = np.asarray(junk[q] if junk is not None else [], dtype=np.int64)
        aps[q] = average_precision(positive_ranks(ranking, pos, bad, max_rank), pos.size)
    scored = aps[~np.isnan(aps)]
    if scored.size == 0:
        raise ValueError("no query has a positive: the mean average precision is undefined")
    return float(scored.mean()), aps
