"""pipelines/sampling/masks.py: block-wise masks of a batch's global views (DINOv2 / BEiT).

- The generator against a cell-by-cell statement of its definition (the same draws), bit
  for bit; its keys (per batch, apart from the per-sample streams).
- Statistics over many draws: exactly ``int(p * G)`` crops masked per batch, each crop's
  target ratio uniform in its own part of ``ratio``, the fraction masked, every block's
  shape (inside the grid, area and aspect ratio within the definition's bounds).
"""
import math

import numpy as np
import pytest

from pipelines.sampling import masks as masks_module
from pipelines.sampling.counter_stream import CounterRNG, sample_key
from pipelines.sampling.masks import (batch_masks, block_mask, draw_batch_masks, draw_block,
                                      mask_key)
from pipelines.spec import AugmentationSpec, MaskingSpec, ViewSpec

DINOV2 = MaskingSpec(patch_size=14)


def cell_by_cell_mask(masking, rows, cols, target, rng):
    """BEiT's block masking as written in its paper's appendix and code comments: blocks of
    random area and aspect, cell loops, the same draws in the same order."""
    mask = [[False] * cols for _ in range(rows)]
    count = 0
    while count < target:
        cap = min(target - count, masking.max_block_fraction * rows * cols)
        delta = 0
        for _ in range(10):
            area = rng.uniform(masking.min_block_patches, cap)
            aspect = math.exp(rng.uniform(math.log(masking.aspect[0]),
                                          math.log(masking.aspect[1])))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < cols and h < rows:
                top, left = rng.integers(0, rows - h + 1), rng.integers(0, cols - w + 1)
                cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w)]
                new = sum(not mask[i][j] for i, j in cells)
                if 0 < new <= cap:
                    for i, j in cells:
                        if not mask[i][j]:
                            mask[i][j] = True
                            delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return np.array(mask, dtype=bool)


@pytest.mark.parametrize("rows, cols, target", [(16, 16, 100), (16, 16, 3), (6, 6, 18),
                                                (14, 9, 60), (2, 2, 4)])
def test_block_mask_is_the_cell_by_cell_definition(rows, cols, target):
    for seed in range(20):
        got = block_mask(DINOV2, rows, cols, target, CounterRNG(seed))
        want = cell_by_cell_mask(DINOV2, rows, cols, target, CounterRNG(seed))
        assert np.array_equal(got, want), seed
        assert got.sum() <= target


def test_keys_are_per_batch_and_apart_from_the_sample_streams():
    keys = {mask_key(0, r, e, t) for r in range(3) for e in range(3) for t in range(50)}
    assert len(keys) == 3 * 3 * 50
    assert not keys & {sample_key(0, r, e, i) for r in range(3) for e in range(3)
                       for i in range(50)}
    spec = AugmentationSpec(masking=MaskingSpec(patch_size=16))
    a = draw_batch_masks(spec, 1, 0, 2, 5, 8)
    assert a.dtype.is_floating_point is False and a.shape == (16, 14, 14)
    assert np.array_equal(a, draw_batch_masks(spec, 1, 0, 2, 5, 8))
    for other in ((2, 0, 2, 5), (1, 1, 2, 5), (1, 0, 3, 5), (1, 0, 2, 6)):
        assert not np.array_equal(a, draw_batch_masks(spec, *other, 8))


def test_every_batch_masks_int_p_g_crops_with_stratified_ratios(monkeypatch):
    """Over many batches: exactly int(p * G) masked crops, the i-th aiming at int(N r) with r
    uniform in the i-th part of [0.1, 0.5] (uniform within it: mean position 1/2, spread
    1/sqrt(12)); the rows they land on are uniform."""
    targets = []
    real = masks_module.block_mask

    def recording(masking, rows, cols, target, rng):
        targets.append(target)
        return real(masking, rows, cols, target, rng)
    monkeypatch.setattr(masks_module, "block_mask", recording)
    crops, n, draws = 10, 5, 400
    bounds = np.linspace(0.1, 0.5, n + 1)
    rows_hit = np.zeros(crops)
    for t in range(draws):
        got = batch_masks(DINOV2, crops, 16, 16, CounterRNG(mask_key(0, 0, 0, t)))
        masked = got.reshape(crops, -1).any(1)
        assert masked.sum() == n
        rows_hit += masked
    ratios = np.array(targets, dtype=float).reshape(draws, n) / 256
    position = (ratios - bounds[:-1]) / (bounds[1:] - bounds[:-1])  # in [0, 1) up to int()
    assert (position > -0.05).all() and (position < 1).all()
    assert abs(position.mean() - 0.5 + 0.5 / (256 * 0.08)) < 0.03  # int() floors by ~1/2 patch
    assert abs(position.std() - 1 / math.sqrt(12)) < 0.03
    assert np.abs(rows_hit / draws - n / crops).max() < 0.1


def test_fraction_masked_over_many_draws_is_the_target_less_a_small_shortfall():
    spec = AugmentationSpec(masking=DINOV2)  # 224 / 14: 16 x 16
    got = np.stack([draw_batch_masks(spec, 3, 0, 0, t, 16).numpy() for t in range(40)])
    counts = got.reshape(-1, 256).sum(1)
    masked = counts[counts > 0]
    assert len(masked) == 40 * 16  # half of 40 batches x 32 crops
    assert masked.max() <= int(256 * 0.5) and masked.min() >= int(256 * 0.1) * 0.5
    # the targets' mean is 256 * 0.3 (less int()'s floor); blocks may stop a little short
    assert 0.27 * 256 <= masked.mean() <= 0.3 * 256


def test_blocks_are_inside_the_grid_with_the_definitions_area_and_aspect():
    rng = CounterRNG(7)
    empty = np.zeros((16, 16), dtype=bool)
    shapes = []
    for _ in range(3000):
        block = draw_block(DINOV2, empty, 60.0, rng)
        assert block is not None  # an empty 16 x 16 grid always takes a block
        top, left, h, w = block
        assert 0 <= top and top + h <= 16 and 0 <= left and left + w <= 16
        assert h < 16 and w < 16 and 1 <= h * w <= 60
        shapes.append((h, w))
    h, w = np.array(shapes, dtype=float).T
    # round() moves each side by at most 1/2 from sqrt(area * aspect), sqrt(area / aspect)
    lo, hi = DINOV2.aspect
    area_lo = DINOV2.min_block_patches
    assert ((h - 0.5) ** 2 <= 60 * hi).all() and ((w - 0.5) ** 2 <= 60 / lo).all()
    assert ((h + 0.5) * (w + 0.5) >= area_lo).all()
    log_aspect = np.log(h / w)
    # log-uniform aspect: symmetric around 1 (aspect range is symmetric in log), both ends hit
    assert abs(log_aspect.mean()) < 0.05
    assert log_aspect.max() > 0.8 * math.log(hi) and log_aspect.min() < 0.8 * math.log(lo)


def test_a_full_block_cap_ends_the_mask_short_rather_than_overshoot():
    """On a 2 x 2 grid every block must be strictly smaller than the grid: 1 x 1 only
    (area >= 4 rounds to >= 2 x 2 mostly), so masks stop early, never above target."""
    for seed in range(50):
        m = block_mask(DINOV2, 2, 2, 4, CounterRNG(seed))
        assert m.sum() <= 4


def test_spec_masking_section_is_validated_and_omitted_when_off():
    spec = AugmentationSpec()
    assert "masking" not in spec.to_dict()  # DINO's spec, and its YAML, unchanged
    on = AugmentationSpec(masking=MaskingSpec(patch_size=16))
    assert on.to_dict()["masking"]["patch_size"] == 16
    assert AugmentationSpec.from_dict(on.to_dict()) == on
    assert on.mask_grid == (14, 14)
    with pytest.raises(ValueError, match="no masking section"):
        _ = spec.mask_grid
    from pipelines.spec import SpecError
    with pytest.raises(SpecError, match="'masking.patch_size'.*not a multiple"):
        AugmentationSpec(masking=MaskingSpec(patch_size=15))
    with pytest.raises(SpecError, match="'masking'.*one global view size"):
        AugmentationSpec(global_views=(ViewSpec(224, (0.4, 1.0), 1.0, 0.0),
                                       ViewSpec(192, (0.4, 1.0), 1.0, 0.0)),
                         masking=MaskingSpec(patch_size=16))
    for field, changes in (("ratio", {"ratio": (0.5, 0.1)}),
                           ("probability", {"probability": 1.5}),
                           ("max_block_fraction", {"max_block_fraction": 0.0}),
                           ("min_block_patches", {"min_block_patches": 0}),
                           ("aspect", {"aspect": (0.0, 2.0)})):
        with pytest.raises(SpecError, match=f"'masking.{field}'"):
            AugmentationSpec(masking=MaskingSpec(patch_size=16, **changes))


def test_the_dinov2_preset_masks_its_224_px_globals_at_patch_14():
    from pipelines.spec import spec_preset
    spec = spec_preset("dinov2")
    assert spec.masking == MaskingSpec(patch_size=14) and spec.mask_grid == (16, 16)
    assert spec_preset("dino").masking is None  # DINO's spec is unchanged
