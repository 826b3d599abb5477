"""TensorPeak counts the bytes of tensors created in its block while they are alive: each
storage once (views are free), freed when its last tensor goes, autograd's saved tensors
until the backward."""
import torch

from benchmarks.harness.memory import TensorPeak


def test_peak_and_live_bytes_of_created_tensors():
    before = torch.ones(1000)  # not created in the block: not counted
    with TensorPeak() as m:
        a = torch.zeros(250)                      # 1000 bytes
        view = a[10:]                             # the same storage
        b = torch.zeros(500, dtype=torch.float64)  # 4000 bytes
        assert m.live == m.peak == 5000
        del b
        assert m.live == 1000 and m.peak == 5000
        del a
        assert m.live == 1000                     # the view keeps the storage
        del view
        assert m.live == 0
        c = before * 2                            # 4000 bytes
        del c
    assert m.peak == 5000


def test_saved_activations_count_until_the_backward():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with TensorPeak() as m:
        loss = torch.tanh(x @ w).sum()  # tanh's output [32, 64]: only the graph holds it
        assert m.live >= 32 * 64 * 4
        loss.backward()
        del loss
        assert m.live <= 64 * 64 * 4 + 64  # the gradient of w (and a scalar or two) remain
    assert m.peak >= 32 * 64 * 4 + 64 * 64 * 4
