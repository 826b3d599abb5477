"""dino-bench: one timing harness and the sub-benchmarks built on it.

Modules:
- ``harness``   warm-up, repeated timing (median, IQR, min-max; CUDA events on a GPU), peak
  memory, machine description; re-exports the result writing of ``report``.
- ``report``    results as JSON, CSV, markdown, a PNG plot and tensorboard scalars.
- ``flops``     analytic FLOP counts for ViT forwards and DINO train steps; MFU.
- ``trainstep`` student/teacher + ``dino_core.train.step.TrainStep`` ready to time.
- ``patch``     images/s against patch size (forward-only and the full DINO step).
- ``pipeline``  multi-crop loader throughput per backend next to the reference backend.
- ``e2e``       a short training run: images/s and the share of step time waiting for data.
- ``feed``      CPU time per image of the DALI host feed (batched draw vs per-sample draw).
- ``loss``, ``step``  the loss and step benchmarks (issues 5 and 6).
- ``cli``       the ``dino-bench`` console entry point.

Results live in ``benchmarks/results/<machine>_<yyyymm>_<what>.*``.
"""
