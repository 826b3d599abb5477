"""dino-bench: one timing harness and the benchmarks built on it, grouped by what they measure.

- ``harness/``  what every benchmark shares: timing (median, IQR, min-max; CUDA events on a
  GPU), peak memory and the machine description (``timing``); results as JSON, CSV,
  markdown, a PNG plot and tensorboard scalars (``report``); backends run in processes of
  their own with limits (``runs``); the ImageNet-like corpus and the data choice
  (``corpus``, ``corpus_images``, ``folder_stats``, ``bench_data``); CUDA-graph timing.
- ``data/``     loaders per backend against the reference (``pipeline``), conversion
  (``convert``), the DALI host feed (``feed``), the photometric finish (``photometric``), a
  short training run fed by each loader (``e2e``: images/s, data-wait share).
- ``model/``    images/s and MFU against patch size (``patch``), our step against the
  reference step (``step``, built by ``trainstep``), the DINO loss (``loss``), FLOP counts.
- ``gpu/``      the time-boxed GPU check, its plan of device calls, the machine report and
  compute-sanitizer runs.
- ``cli``       the ``dino-bench`` console entry point.

Results live in ``benchmarks/results/<machine>_<yyyymm>_<what>.*``.
"""
