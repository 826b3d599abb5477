"""RecycledOutputs (pipelines/ffcv_backend/outputs.py) against its twin, a fresh copy: same
values; a tensor anyone still references is never written; a dropped one is refilled."""
import torch

from pipelines.ffcv_backend.outputs import RecycledOutputs, one_thread_copy, plain_copy


def _src(seed: int) -> torch.Tensor:
    return torch.rand((6, 3, 4, 4), generator=torch.Generator().manual_seed(seed))


def test_values_equal_the_fresh_copy_and_held_views_stay_intact():
    pool = RecycledOutputs(keep=2)
    first = pool.copy(_src(0), torch.float32)
    held = first.split(3)[1]  # the consumer keeps one view of the first batch
    del first
    for seed in range(1, 5):
        out = pool.copy(_src(seed), torch.float32)
        assert torch.equal(out, plain_copy(_src(seed), torch.float32))
        del out
    assert torch.equal(held, _src(0)[3:])  # never overwritten while held
    assert pool.reused >= 2  # the dropped ones were refilled


def test_a_dropped_tensor_is_refilled_in_place():
    pool = RecycledOutputs(keep=1)
    out = pool.copy(_src(0), torch.float32)
    address = out.data_ptr()
    del out
    again = pool.copy(_src(1), torch.float32)
    assert again.data_ptr() == address and torch.equal(again, _src(1))


def test_other_shapes_and_dtypes_get_their_own_tensor():
    pool = RecycledOutputs(keep=2)
    a = pool.copy(_src(0), torch.float32)
    address = a.data_ptr()
    del a
    b = pool.copy(_src(0)[:2], torch.float32)
    c = pool.copy(_src(0), torch.float64)
    assert b.data_ptr() != address and c.data_ptr() != address
    assert c.dtype == torch.float64 and torch.equal(c, _src(0).double())


def test_without_torch_use_counts_every_copy_is_fresh(monkeypatch):
    monkeypatch.delattr(torch._C, "_storage_Use_Count", raising=False)
    pool = RecycledOutputs(keep=2)
    for seed in range(3):
        out = pool.copy(_src(seed), torch.float32)
        assert torch.equal(out, _src(seed))
        del out
    assert pool.reused == 0


def test_one_thread_copy_equals_torch_copy_for_every_output_dtype():
    # float16: numpy's cast must round as torch's (nearest even; overflow to inf, subnormals)
    src = torch.cat([torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3,
                     torch.tensor([65519.0, 65520.0, 1e6, -1e6, 3e-8, -6e-5, 0.0, -0.0]),
                     torch.rand(4096, generator=torch.Generator().manual_seed(1)) * 1e-4])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = torch.empty(src.shape, dtype=dtype)
        one_thread_copy(out, src)
        assert torch.equal(out.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           src.to(dtype).view(torch.int16 if dtype != torch.float32
                                              else torch.int32)), dtype
