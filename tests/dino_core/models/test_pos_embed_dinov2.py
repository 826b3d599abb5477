"""The position-embedding resize of DINOv2's models equals an independent statement of it.

DINOv2 (facebookresearch/dinov2, ``interpolate_pos_encoding`` after the registers release),
described in words: the stored s x s grid is resized bicubically (align_corners False) to
the input's gh x gw patches;
  - ``interpolate_offset`` > 0 (released models without registers: 0.1, DINO's): with the
    scale factors ((gh + offset) / s, (gw + offset) / s), as upstream DINO
    (``test_pos_embed.upstream_pos_embed`` states it);
  - offset 0 (register models): with the output size (gh, gw), i.e. output index i samples
    source (i + 0.5) * s / g - 0.5;
  - ``interpolate_antialias`` (register models): torch's antialiased bicubic, which is PIL's
    resampling: output i of n_out from n_in (scale = n_in / n_out) averages the inputs j
    with center = (i + 0.5) * scale, |j + 0.5 - center| < support = 2 * max(scale, 1), each
    weighted by Keys' cubic with a = -0.5 at (j + 0.5 - center) / max(scale, 1), weights
    normalised to sum 1 (no border clamping: missing taps just drop out).
Written below in float64 numpy, not by calling torch's interpolation.
"""
import math

import numpy as np
import pytest
import torch

from dino_core.models.vit import VisionTransformer
from tests.dino_core.models.test_pos_embed import resize_axis, upstream_pos_embed


def size_resize_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Plain bicubic (a = -0.75, taps clamped at the border) to ``n_out`` along ``axis``."""
    return resize_axis(a, axis, n_out / a.shape[axis], out_n=n_out)


def pil_cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def antialiased_resize_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """PIL-style antialiased bicubic to ``n_out`` along ``axis`` (module docstring)."""
    n = a.shape[axis]
    scale = n / n_out
    stretch = max(scale, 1.0)
    rows = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        taps = [j for j in range(n) if abs(j + 0.5 - center) < 2 * stretch]
        weights = [pil_cubic((j + 0.5 - center) / stretch) for j in taps]
        total = sum(weights)
        rows.append(sum(w / total * np.take(a, j, axis=axis) for j, w in zip(taps, weights)))
    return np.stack(rows, axis=axis)


def dinov2_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, patch: int,
                     offset: float, antialias: bool) -> np.ndarray:
    if offset:
        assert (offset, antialias) == (0.1, False)  # the only offset DINOv2 releases use
        return upstream_pos_embed(pos_embed, rows, cols, patch)
    pe = pos_embed.detach().double().numpy()
    n = pe.shape[1] - 1
    gh, gw = rows // patch, cols // patch
    if gh * gw == n and rows == cols:
        return pe
    s = int(math.sqrt(n))
    resize = antialiased_resize_axis if antialias else size_resize_axis
    grid = resize(resize(pe[0, 1:].reshape(s, s, -1), 0, gh), 1, gw)
    return np.concatenate([pe[:, :1], grid.reshape(1, -1, pe.shape[-1])], axis=1)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True), (0.0, False)])
@pytest.mark.parametrize("rows,cols", [(224, 224), (98, 98), (224, 98), (644, 644), (518, 518)])
def test_released_grid_resize_equals_the_statement(offset, antialias, rows, cols):
    torch.manual_seed(rows + cols)
    m = VisionTransformer(img_size=518, patch_size=14, embed_dim=8, depth=1, num_heads=2,
                          interpolate_offset=offset, interpolate_antialias=antialias)
    ours = m.interpolate_pos_encoding(rows, cols)
    want = dinov2_pos_embed(m.pos_embed, rows, cols, 14, offset, antialias)
    assert ours.shape == (1, 1 + (rows // 14) * (cols // 14), 8)
    np.testing.assert_allclose(ours.detach().double().numpy(), want, atol=1e-5, rtol=0)
    if rows == cols == 518:
        assert ours is m.pos_embed


def test_the_three_settings_give_different_embeddings():
    """What the statement tells apart, the model does too (a wrong setting would show)."""
    torch.manual_seed(0)
    outs = []
    for offset, aa in [(0.1, False), (0.0, True), (0.0, False)]:
        m = VisionTransformer(img_size=518, patch_size=14, embed_dim=8, depth=1, num_heads=2,
                              interpolate_offset=offset, interpolate_antialias=aa)
        with torch.no_grad():
            m.pos_embed.copy_(torch.randn_like(m.pos_embed))
            outs.append(m.interpolate_pos_encoding(224, 224).clone())
        torch.manual_seed(0)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (outs[i] - outs[j]).abs().max() > 1e-3
