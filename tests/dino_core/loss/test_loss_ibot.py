"""The iBOT patch loss as DINOv2 weights it, in float64 against its definition written with
loops over crops and their masked patches, gradients included; the fused closed form and the
plain-autograd twin against each other (float64, float32, bfloat16) and torch's gradcheck.

Definition (DINOv2 ``iBOTPatchLoss.forward_masked`` with the meta-architecture's scales):
the mean over each crop's masked patches of ``-<q, log_softmax(s / tau)>``, then the sum over
crops divided by the number of ALL global crops (unmasked ones count with zero)."""
import pytest
import torch

from dino_core.loss import MaskedPositions, fused_patch_ce, ibot_patch_loss, reference_patch_ce
from dino_core.loss.patch_ce import FusedPatchCEFunction
from tests.dino_core.loss.cases import rel_err


def crop_loop_loss(student, teacher, masks, tau):
    """student, teacher [G, N, K] (all patches), masks [G, N] bool."""
    G = masks.shape[0]
    total = 0.0
    for g in range(G):
        masked = [n for n in range(masks.shape[1]) if masks[g, n]]
        if not masked:
            continue  # an unmasked crop adds nothing, but counts in G
        crop = 0.0
        for n in masked:
            crop = crop - (teacher[g, n] * torch.log_softmax(student[g, n] / tau, dim=-1)).sum()
        total = total + crop / len(masked)
    return total / G


def inputs(G, N, K, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = 3.0 * torch.randn(G, N, K, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(G, N, K, generator=g, dtype=torch.float64) / 0.2, -1)
    masks = torch.rand(G, N, generator=g) < 0.4
    masks[0] = False  # one unmasked crop
    masks[1, 0] = True
    return student.to(dtype), teacher, masks


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("G, N, K", [(4, 9, 7), (2, 16, 33), (6, 4, 3)])
def test_ibot_loss_is_its_definition_value_and_gradient(impl, G, N, K):
    student, teacher, masks = inputs(G, N, K, seed=G * N + K)
    ref_s = student.clone().requires_grad_()
    ref = crop_loop_loss(ref_s, teacher, masks, 0.1)
    ref.backward()
    pos = MaskedPositions.from_masks(masks.view(G, N))
    s = student.clone().requires_grad_()
    tokens = s.reshape(G * N, K)[pos.index]               # the masked tokens, [M, K]
    q = teacher.reshape(G * N, K)[pos.index]
    got = ibot_patch_loss(tokens, q, pos, 0.1, impl=impl)
    got.backward()
    assert pos.crops == G and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-10, atol=1e-15)


def test_positions_from_masks_and_the_weight_of_unmasked_crops():
    masks = torch.tensor([[[True, False], [False, True]], [[False] * 2] * 2,
                          [[True, True], [True, False]]])
    pos = MaskedPositions.from_masks(masks)
    assert pos.index.tolist() == [0, 3, 8, 9, 10] and pos.crops == 3
    torch.testing.assert_close(pos.weight, torch.tensor([1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9],
                                                        dtype=torch.float64))
    with pytest.raises(ValueError, match="bool CPU tensor"):
        MaskedPositions.from_masks(masks.float())


def test_fused_passes_gradcheck_and_handles_no_tokens():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), -1)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: FusedPatchCEFunction.apply(x, q, w, 0.1), (s,))
    empty = torch.zeros(0, 6, dtype=torch.float64, requires_grad=True)
    loss = fused_patch_ce(empty, q[:0], w[:0], 0.1)
    loss.backward()
    assert loss.item() == 0 and empty.grad.shape == (0, 6)


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_fused_equals_the_twin_in_low_precision(dtype, bound, monkeypatch):
    """Several row chunks (a small chunk size), bf16 logits widened before the multiply."""
    monkeypatch.setattr("dino_core.loss.patch_ce.CHUNK_ELEMENTS", 64)
    student, teacher, masks = inputs(3, 8, 40, seed=5, dtype=dtype)
    pos = MaskedPositions.from_masks(masks)
    tokens = student.reshape(-1, 40)[pos.index]
    q = teacher.reshape(-1, 40)[pos.index].float()
    results = []
    for fn in (reference_patch_ce, fused_patch_ce):
        s = tokens.clone().requires_grad_()
        loss = fn(s, q, pos.weight, 0.1)
        loss.backward()
        assert loss.dtype == torch.float32 and s.grad.dtype == dtype
        results.append((loss.detach(), s.grad))
    (ref_loss, ref_grad), (loss, grad) = results
    assert rel_err(loss, ref_loss) <= bound
    # bf16 gradients round once (fused) or differ by a bf16 ulp after rounding (twin)
    grad_bound = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert rel_err(grad, ref_grad) <= grad_bound


def test_implementation_choice_never_reaches_a_missing_kernel(monkeypatch):
    """auto on CPU tensors is the fused path; 'cuda' is refused with the reason when the
    library does not load, or loads but predates the patch-loss kernel (not an ImportError
    or a missing symbol)."""
    from dino_core.loss import patch_cuda
    from dino_core.loss.ibot import resolve_impl
    from pipelines.kernels import library

    logits = torch.zeros(3, 5)
    assert resolve_impl("auto", logits, set()) == "fused"
    monkeypatch.setattr(library, "unavailable_reason", lambda: "no library here")
    with pytest.raises(RuntimeError, match="unavailable: no library here"):
        resolve_impl("cuda", logits, set())
    monkeypatch.setattr(library, "unavailable_reason", lambda: None)
    monkeypatch.setattr(library, "load", lambda: object())  # a library without the kernel
    assert "has no patch_ce_rows" in patch_cuda.unavailable_reason()
    with pytest.raises(RuntimeError, match="has no patch_ce_rows .* rebuild it"):
        resolve_impl("cuda", logits, set())
