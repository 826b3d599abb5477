"""The KoLeo regulariser in float64 against its definition written with pair loops, gradients
included (the nearest neighbour is a fixed choice: the gradient flows through both ends)."""
import math

import pytest
import torch

from dino_core.loss import koleo_loss


def pair_loop_koleo(x, eps=1e-8):
    """-1/n sum_i log(min_{j != i} ||x_i/|x_i| - x_j/|x_j||| + eps), with explicit loops."""
    n = x.shape[0]
    u = [x[i] / torch.sqrt((x[i] * x[i]).sum()) for i in range(n)]
    total = 0.0
    for i in range(n):
        best = None
        for j in range(n):
            if j == i:
                continue
            d = torch.sqrt(((u[i] - u[j]) ** 2).sum())
            if best is None or d.item() < best.item():
                best = d
        total = total + torch.log(best + eps)
    return -total / n


def features(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n, dim", [(2, 3), (5, 4), (16, 8), (9, 32)])
def test_koleo_is_its_definition_value_and_gradient(n, dim):
    x = features(n, dim, seed=n * dim)
    ref_x = x.clone().requires_grad_()
    ref = pair_loop_koleo(ref_x)
    ref.backward()
    got_x = x.clone().requires_grad_()
    got = koleo_loss(got_x)
    got.backward()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-9, atol=1e-12)


def test_koleo_passes_gradcheck():
    x = features(6, 5, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(koleo_loss, (x,), eps=1e-6, atol=1e-6)


def test_koleo_rewards_spread_features_and_ignores_scale():
    crowded = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.98, 0.02]], dtype=torch.float64)
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]], dtype=torch.float64)
    assert koleo_loss(spread) < koleo_loss(crowded)
    torch.testing.assert_close(koleo_loss(3.0 * spread), koleo_loss(spread))


def test_one_row_is_a_constant_without_gradient_and_low_precision_runs_in_float32():
    x = features(1, 4, seed=2).requires_grad_()
    loss = koleo_loss(x)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(1e-8))
    assert torch.equal(x.grad, torch.zeros_like(x))
    half = features(4, 8, seed=3).to(torch.bfloat16)
    assert koleo_loss(half).dtype == torch.float32
    with pytest.raises(ValueError, match="koleo_loss needs"):
        koleo_loss(torch.zeros(0, 3))
