import pytest
import torch

from dino_core.train.ema import ema_update, ema_update_reference, paired_params
from dino_core.models import DINOHead, MultiCropWrapper, vit_tiny


def pair():
    torch.manual_seed(0)
    s = MultiCropWrapper(vit_tiny(), DINOHead(192, 16, hidden_dim=32, bottleneck_dim=8))
    torch.manual_seed(1)
    t = MultiCropWrapper(vit_tiny(), DINOHead(192, 16, hidden_dim=32, bottleneck_dim=8))
    return s, t


def test_foreach_ema_equals_reference_loop():
    s, t1 = pair()
    _, t2 = pair()
    sp, tp1 = paired_params(s, t1)
    _, tp2 = paired_params(s, t2)
    before = [p.clone() for p in tp1]
    ema_update(sp, tp1, 0.99)
    ema_update_reference(sp, tp2, 0.99)
    for a, b, old, st in zip(tp1, tp2, before, sp):
        assert torch.allclose(a, b, atol=1e-7)
        assert torch.allclose(a, 0.99 * old + 0.01 * st, atol=1e-6)


def test_momentum_one_keeps_teacher_and_zero_copies_student():
    s, t = pair()
    sp, tp = paired_params(s, t)
    before = [p.clone() for p in tp]
    ema_update(sp, tp, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(tp, before))
    ema_update(sp, tp, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(tp, sp))


def test_mismatched_models_are_refused():
    s, _ = pair()
    with pytest.raises(ValueError, match="differ"):
        paired_params(s, vit_tiny())
