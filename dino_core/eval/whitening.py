"""PCA whitening learned on a separate set of descriptors (copy detection, as in the paper).

``fit_whitening`` centres the learning set on its mean, takes the eigen-decomposition of its
covariance and keeps the ``dim`` strongest directions; ``Whitening.apply`` maps a descriptor x
to diag(lambda + eps)^(-1/2) V^T (x - mean). On the learning set itself the result has an
identity covariance (up to eps), which is what its test checks. Descriptors are
L2-normalised again after whitening by the caller, as the protocol does.

(The upstream script estimates the covariance from uncentred descriptors while subtracting
the mean when applying; here the covariance is that of the centred set, the textbook PCA
whitening.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-6  # added to every eigenvalue: directions with no variance are not blown up


@dataclass(frozen=True)
class Whitening:
    """mean [D] and projection [d, D] (rows: principal directions scaled by 1/sqrt(var))."""

    mean: torch.Tensor
    projection: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whitened descriptors [N, d] of x [N, D] (float64 maths, float32 out)."""
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"descriptors of dimension {x.shape[-1]} cannot use a whitening "
                             f"learned on dimension {self.mean.shape[0]}")
        return ((x.double() - self.mean) @ self.projection.T).float()


def fit_whitening(features: torch.Tensor, dim: int | None = None,
                  eps: float = EPS) -> Whitening:
    """Learn PCA whitening on features [N, D]; keep ``dim`` directions (default: all, D)."""
    n, d = features.shape
    dim = d if dim is None else dim
    if not 1 <= dim <= d:
        raise ValueError(f"whitening dimension must be in [1, {d}], got {dim}")
    if dim >= n:
        raise ValueError(f"a whitening learned on {n} descriptors cannot span {dim} "
                         f"dimensions (the rest would be noise scaled by 1/sqrt(eps)); use more "
                         f"whitening images or a whitening dimension below {n}")
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / n                                                 # (D, D)
    eigval, eigvec = torch.linalg.eigh(cov)                      # ascending eigenvalues
    order = torch.argsort(eigval, descending=True)[:dim]
    scale = (eigval[order].clamp(min=0) + eps).rsqrt()                            # (d,)
    return Whitening(mean, eigvec[:, order].T * scale[:, None])
