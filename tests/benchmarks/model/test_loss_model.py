"""benchmarks/model/loss_model.py: the floor and the modelled bytes of each loss implementation."""
import pytest
import torch

from benchmarks.model import loss as loss_bench
from benchmarks.model.loss_model import Shapes, bytes_moved, floor_bytes, ops_of

RECIPE = Shapes(batch=64, views=12, out_dim=65536, dtype=torch.bfloat16)


def test_floor_is_logits_in_teacher_in_gradient_out():
    assert floor_bytes(RECIPE) == (2 * 12 * 64 + 2 * 64) * 65536 * 2 == 218_103_808


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_cuda_kernels_move_the_floor_plus_the_center_and_row_losses(dtype):
    sh = Shapes(64, 12, 65536, dtype)
    a = 8 if dtype == torch.float64 else 4
    extra = 65536 * a + 2 * 12 * 64 * a  # center in; row losses out and summed
    for impl in ("cuda", "cuda (overwrite logits)"):
        assert bytes_moved(impl, sh) == floor_bytes(sh) + extra
        assert bytes_moved(impl, sh) <= 1.3 * floor_bytes(sh)


def test_cuda_float16_reads_the_logits_twice_for_its_one_rounding():
    sh = Shapes(64, 12, 65536, torch.float16)
    assert bytes_moved("cuda", sh) > floor_bytes(sh) + sh.s * sh.e + sh.t * sh.e


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("views", [2, 3, 12])
def test_every_implementation_moves_at_least_the_floor(dtype, views):
    sh = Shapes(4, views, 256, dtype)
    for impl in loss_bench.IMPLS:
        ops = ops_of(impl, sh)
        assert all(op.read >= 0 and op.write >= 0 for op in ops)
        assert bytes_moved(impl, sh) >= floor_bytes(sh), impl


def test_reference_pair_loop_counts_its_pairs():
    """One more view adds two pairs' [B, K] tensors (and its own share of the whole-tensor
    ops): the model grows by at least 2 * 8 pair-tensor reads/writes per pair."""
    small, big = Shapes(4, 4, 256, torch.float32), Shapes(4, 5, 256, torch.float32)
    per_pair = (8 + 5) * 4 * 256 * 4  # forward 8 and backward 5 [B, K] float32 accesses
    assert bytes_moved("reference", big) - bytes_moved("reference", small) >= 2 * per_pair


def test_unknown_implementation_has_no_model():
    with pytest.raises(ValueError, match="no byte model"):
        bytes_moved("triton", RECIPE)
