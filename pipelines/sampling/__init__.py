"""What is drawn: every random decision of the multi-crop recipe, from one counter stream.

    counter_stream.py  ``sample_rng(seed, rank, epoch, index)``: a counter-based stream per
                       sample, so any executor, any worker and a resumed run draw the same
    draw.py            the plain-Python draw: ``sample_image_params`` -> one ``ViewParams``
                       per view (crop box, flip, jitter order and factors, grayscale, blur
                       sigma, solarize), the order of draws being part of the contract
    compiled_draw.py   its numba twin, bit for bit, writing ``param_row`` rows per batch
                       (the DALI feed and the FFCV op use it; needs numba)
    param_row.py       ``ViewParams`` <-> one float64 row, the layout compiled code and the
                       photometric kernels read
    masks.py           block-wise patch masks of a batch's global views (iBOT / DINOv2),
                       drawn per batch by the loader wrapper from ``mask_key(seed, rank,
                       epoch, batch)``

How the drawn parameters are applied lives in ``pipelines.photometric``.
"""
from .counter_stream import CounterRNG, sample_key
from .draw import (JITTER_OPS, JitterParams, Rng, ViewParams, jitter_ranges, sample_crop_box,
                   sample_image_params, sample_jitter, sample_rng, sample_view_params)

__all__ = ["CounterRNG", "JITTER_OPS", "JitterParams", "Rng", "ViewParams", "jitter_ranges",
           "sample_crop_box", "sample_image_params", "sample_jitter", "sample_key",
           "sample_rng", "sample_view_params"]
