"""The DALI executor: ``build_loader(data, backend="dali")``.

    feed.py     host side: epoch order, encoded bytes, view parameters (compiled_draw.py)
    boxes.py    parameter rows -> each view's relative crop box, the flip folded in
    graph.py    AugmentationSpec -> DALI graph: decode once, every view's resized crop (uint8)
    readers.py  ImageFolder trees and ``dino-convert --format wds`` shard folders
    loader.py   the pipeline behind the MultiCropLoader contract, and the photometric
                finish after it (``pipelines.photometric.finish.finish_many``)

Design choices, and why:
- DALI decodes and cuts views, nothing more (about 3 operators per view); the photometric
  ops run after it on the same device in one fused call per batch (all view sizes), the
  same finish every executor uses. In the graph they took ~100 operators per view.
- The graph executes parameters drawn on the host on the reference's streams
  (``sample_rng(seed, global rank, epoch, index)``), instead of drawing them in-graph: the
  same seed gives the reference executor's crops, flips and jitter, a resumed run continues
  exactly, and tests can force every parameter. The draw is ``pipelines.sampling.compiled_draw``,
  the compiled twin of ``pipelines.sampling``, once per batch: microseconds per image,
  where a Python draw per view was most of the feed's CPU time.
- Bytes come through an external source in an order the loader controls (the reference
  loader's whole-dataset permutation per epoch, strided by global rank), not from
  ``fn.readers.file`` / ``fn.readers.webdataset``: with ``shuffle_after_epoch`` DALI's
  webdataset reader reshuffles only the ORDER OF THE TAR FILES (samples stay in tar order,
  checked with DALI 2.4.0) and its ``random_shuffle`` is a buffer over a fixed shard, so
  neither gives a whole-dataset reshuffle. The shards and ``.idx`` files stay readable by
  ``fn.readers.webdataset`` (tested).

Import ``pipelines.dali_backend.loader`` (which imports DALI) only when DALI is installed;
``boxes`` needs numpy only; ``feed`` numpy, PIL and numba (which the dali extra installs).
"""
