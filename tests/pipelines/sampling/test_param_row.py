"""pipelines.param_row: rows are an exact encoding of ViewParams."""
import numpy as np

from pipelines.sampling import param_row as pr
from pipelines.sampling import sample_image_params, sample_rng
from pipelines.spec import AugmentationSpec


def test_round_trip_over_drawn_views():
    spec = AugmentationSpec()
    params = [p for i in range(40) for p in sample_image_params(spec, 180, 140,
                                                                 sample_rng(3, 0, 0, i))]
    assert any(p.jitter is None for p in params) and any(p.jitter for p in params)
    assert any(p.blur_sigma is None for p in params) and any(p.blur_sigma for p in params)
    rows = pr.to_rows(params)
    assert rows.shape == (len(params), pr.WIDTH) and rows.dtype == np.float64
    assert [pr.from_row(r) for r in rows] == params


def test_columns_are_named_once():
    assert len(set(pr.NAMES)) == pr.WIDTH
    assert [getattr(pr.COL, n) for n in pr.NAMES] == list(range(pr.WIDTH))
