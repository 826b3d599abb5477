"""PCA whitening: whitened learning data has identity covariance and zero mean."""
import pytest
import torch

from dino_core.eval.whitening import fit_whitening


def correlated(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.5, 5.0, d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.double() + 3.0


def test_whitened_learning_data_has_identity_covariance():
    x = correlated(500)
    y = fit_whitening(x).apply(x).double()
    cov = (y - y.mean(0)).T @ (y - y.mean(0)) / y.shape[0]
    assert torch.allclose(y.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=1e-4)


def test_reduced_whitening_keeps_the_strongest_directions():
    x = correlated(400)
    w = fit_whitening(x, dim=2)
    y = w.apply(x).double()
    assert y.shape == (400, 2)
    assert torch.allclose(y.T @ y / 400, torch.eye(2, dtype=torch.float64), atol=1e-4)
    # the kept rows are the full whitening's first two, its strongest directions: their
    # scale 1/sqrt(variance) is the smallest of all rows
    full = fit_whitening(x)
    norms = full.projection.norm(dim=1)
    assert torch.allclose(w.projection, full.projection[:2])
    assert norms[:2].max() < norms[2:].min()

def test_bad_whitening_requests_are_clear_errors():
    x = correlated(5)
    with pytest.raises(ValueError, match="cannot span 6 dimensions"):
        fit_whitening(x)
    with pytest.raises(ValueError, match=r"in \[1, 6\]"):
        fit_whitening(correlated(50), dim=7)
    with pytest.raises(ValueError, match="dimension 3"):
        fit_whitening(correlated(50)).apply(torch.zeros(2, 3))
