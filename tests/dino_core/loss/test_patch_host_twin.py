"""The patch-loss kernel's math, built for the host (csrc/patch_ce_host.cpp with
csrc/patch_ce_math.h), against reference_patch_ce: loss and gradient, rows split over many
simulated threads (the online statistics' combine), an upstream gradient, float32 and float64."""
import pytest
import torch

from tests.dino_core.loss.cases import rel_err
from tests.dino_core.loss.patch_cases import (build_twin, grad_unit, make_inputs, reference_run,
                                              twin_run)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return build_twin(tmp_path_factory.mktemp("patch_twin"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows,dim,lanes", [(1, 7, 1), (5, 65, 256), (37, 1000, 256),
                                            (3, 300, 7)])
def test_twin_matches_the_reference(twin, dtype, rows, dim, lanes):
    student, q, weight = make_inputs(rows, dim, dtype, seed=rows * dim)
    upstream = -1.75
    loss, grad = twin_run(twin, student, q, weight, upstream, lanes)
    ref_loss, ref_grad = reference_run(student, q, weight, upstream)
    bound = 1e-12 if dtype == torch.float64 else 2e-5
    assert rel_err(loss, ref_loss) <= bound
    assert ((grad.double() - ref_grad).abs().max() / grad_unit(weight, upstream)) <= bound


def test_twin_matches_unnormalised_teacher_mass(twin):
    """m_i = sum_k q_i[k] enters both terms: teacher rows of mass 0.5 and 0 too."""
    student, q, weight = make_inputs(4, 50, torch.float64, seed=3)
    q = q * torch.tensor([[1.0], [0.5], [0.0], [2.0]], dtype=torch.float64)
    loss, grad = twin_run(twin, student, q, weight, 1.0, 16)
    ref_loss, ref_grad = reference_run(student, q, weight, 1.0)
    assert rel_err(loss, ref_loss) <= 1e-12
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
