import torch

from dino_core.models import DINOHead, MultiCropWrapper, vit_tiny
from dino_core.train.optim import (build_optimizer, clip_per_tensor, clip_per_tensor_reference,
                             drop_last_layer_grad, param_groups, set_hyperparams)


def tiny_model():
    torch.manual_seed(0)
    return MultiCropWrapper(vit_tiny(), DINOHead(192, 32, hidden_dim=64, bottleneck_dim=16))


def test_no_weight_decay_on_biases_and_1d_params():
    m = tiny_model()
    decay, no_decay = param_groups(m)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    # frozen weight_g is left out entirely
    assert all("weight_g" not in names[id(p)] for g in (decay, no_decay) for p in g["params"])


def test_set_hyperparams_only_decays_group_zero():
    opt = build_optimizer(tiny_model(), "adamw", torch.device("cpu"))
    set_hyperparams(opt, 0.1, 0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]


def test_foreach_clipping_equals_reference_loop():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 5)) for _ in range(6)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for i, (pa, pb) in enumerate(zip(a, b)):
        g = torch.randn(5, 5) * (0.1 if i % 2 else 10.0)  # some above, some below the limit
        pa.grad, pb.grad = g.clone(), g.clone()
    norms = [p.grad.norm() for p in a]  # before clipping
    assert clip_per_tensor(a, 3.0) is None  # nothing computed for nobody to read
    ref_norms = clip_per_tensor_reference(b, 3.0)
    assert torch.allclose(torch.stack(norms), torch.tensor(ref_norms), rtol=1e-6)
    for pa, pb in zip(a, b):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-6)
        assert pa.grad.norm() <= 3.0 + 1e-4


def test_drop_last_layer_grad():
    m = tiny_model()
    free = DINOHead(192, 32, hidden_dim=64, bottleneck_dim=16, norm_last_layer=False)
    m.head = free
    m(torch.randn(1, 3, 32, 32)).sum().backward()
    drop_last_layer_grad(m)
    assert m.head.last_layer.weight_v.grad is None and m.head.last_layer.weight_g.grad is None
    assert m.head.mlp[0].weight.grad is not None


def test_apex_request_without_apex_is_a_clear_error():
    import importlib.util
    if importlib.util.find_spec("apex") is not None:
        return
    try:
        build_optimizer(tiny_model(), "apex", torch.device("cpu"))
    except RuntimeError as e:
        assert "apex" in str(e) and "adamw" in str(e)
    else:
        raise AssertionError("expected an error")
