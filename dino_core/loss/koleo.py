"""The KoLeo regulariser (DINOv2 section 4, from the Kozachenko-Leonenko differential entropy
estimator; Sablayrolles et al. 2019, "Spreading vectors for similarity search").

For the ``n`` rows of ``x [n, D]`` (DINOv2: the student's CLS tokens of ONE global crop of
the rank's batch, before the head), each L2-normalised to ``u_i``:

    L_koleo = -1/n sum_i log(d_i + eps),   d_i = min_{j != i} ||u_i - u_j||

which grows as neighbours crowd together, so minimising it spreads the features uniformly
over the batch. The nearest neighbour is chosen without gradient (the largest dot product,
as DINOv2 does on normalised rows); the gradient flows through both ends of each distance.
In float32 whatever the autocast (DINOv2 disables it too); float64 stays float64.

DINOv2 measures the distance with ``nn.PairwiseDistance(eps=1e-8)``, which adds 1e-8 to
every coordinate of the difference before the norm; here the difference is exact (a change
of at most ~1e-8 * sqrt(D) in ``d_i``, far below ``eps`` in the log's argument). A single
row has no neighbour: its distance is taken to itself, 0, and the loss is the constant
``-log(eps)`` with no gradient (DINOv2 gives the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import accumulation_dtype

EPS = 1e-8  # DINOv2's


def koleo_loss(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``L_koleo`` of the rows of ``x [n, D]`` (n >= 1); a 0-dim tensor (see the module
    docstring)."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"koleo_loss needs [n >= 1, D] features, got {tuple(x.shape)}")
    acc = accumulation_dtype(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        u = F.normalize(x.to(acc), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = u @ u.t()                                        # [n, n]
            dots.fill_diagonal_(float("-inf"))                      # not its own neighbour
            nearest = dots.argmax(dim=1) if x.shape[0] > 1 else torch.zeros_like(
                dots[:, 0], dtype=torch.long)
        distance = torch.linalg.vector_norm(u - u[nearest], dim=-1)  # [n]
        return -torch.log(distance + eps).mean()
