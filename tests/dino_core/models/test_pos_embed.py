"""The position-embedding resize equals upstream DINO's at every input size.

Upstream (facebookresearch/dino, vision_transformer.py, ``interpolate_pos_encoding``), as
described in words: for an input of R x C pixels (its ``w, h`` are x.shape[2], x.shape[3],
i.e. rows then columns), with N stored patch positions on an s x s grid (s = sqrt(N)):
  - if the input has N patches and R == C, the stored embedding is used as is;
  - else r0 = R // p + 0.1, c0 = C // p + 0.1, and the grid (1, D, s, s) is resized by
    bicubic interpolation (align_corners False) with scale factors (r0 / s, c0 / s); the
    output must be (int(r0), int(c0)); the cls position is kept.
Below, that resize is written out in float64 numpy from the definition of torch's bicubic
(Keys' cubic convolution with a = -0.75; output index i samples source
(i + 0.5) / factor - 0.5; taps clamped at the border), not by calling the code under test.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_core.models import build_vit

A = -0.75  # torch's bicubic coefficient


def cubic_weights(t: float) -> list[float]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position t in [0, 1)."""
    def near(x):  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def resize_axis(a: np.ndarray, axis: int, factor: float, out_n: int | None = None
                ) -> np.ndarray:
    """Bicubic resize of ``a`` along ``axis`` by ``factor`` (output floor(n * factor), or
    ``out_n`` when given: a resize to a size samples with factor out_n / n)."""
    n = a.shape[axis]
    out_n = int(math.floor(n * factor)) if out_n is None else out_n
    rows = []
    for i in range(out_n):
        src = (i + 0.5) / factor - 0.5
        i0 = math.floor(src)
        acc = 0.0
        for k, wgt in zip(range(i0 - 1, i0 + 3), cubic_weights(src - i0)):
            acc = acc + wgt * np.take(a, min(max(k, 0), n - 1), axis=axis)
        rows.append(acc)
    return np.stack(rows, axis=axis)


def upstream_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, patch: int) -> np.ndarray:
    """Upstream's resized position embeddings (1, 1 + gh * gw, D), float64."""
    pe = pos_embed.detach().double().numpy()
    n = pe.shape[1] - 1
    if (rows // patch) * (cols // patch) == n and rows == cols:
        return pe
    s = int(math.sqrt(n))
    r0, c0 = rows // patch + 0.1, cols // patch + 0.1
    grid = pe[0, 1:].reshape(s, s, -1)                     # (s, s, D): rows, columns
    grid = resize_axis(grid, 0, r0 / math.sqrt(n))
    grid = resize_axis(grid, 1, c0 / math.sqrt(n))
    assert grid.shape[:2] == (int(r0), int(c0))
    return np.concatenate([pe[:, :1], grid.reshape(1, -1, pe.shape[-1])], axis=1)


@pytest.mark.parametrize("patch", [16, 8])
@pytest.mark.parametrize("rows,cols", [(224, 224), (96, 96), (96, 160), (480, 640)])
def test_pos_embed_resize_equals_upstream(patch, rows, cols):
    torch.manual_seed(patch + rows + cols)
    m = build_vit("vit_tiny", patch)
    ours = m.interpolate_pos_encoding(rows, cols)
    want = upstream_pos_embed(m.pos_embed, rows, cols, patch)
    assert ours.shape == (1, 1 + (rows // patch) * (cols // patch), m.embed_dim)
    np.testing.assert_allclose(ours.detach().double().numpy(), want, atol=1e-5, rtol=0)
    if (rows, cols) == (224, 224):
        assert ours is m.pos_embed


def test_size_based_resize_differs_from_upstream():
    """The +0.1 scale factor moves the samples: resizing to the output size is not upstream's
    result (what this module did before; the test above catches it)."""
    torch.manual_seed(0)
    m = build_vit("vit_tiny", 16)
    grid = m.pos_embed[:, 1:].detach().reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, 36, -1).double().numpy()
    want = upstream_pos_embed(m.pos_embed, 96, 96, 16)[:, 1:]
    assert np.abs(by_size - want).max() > 1e-3

