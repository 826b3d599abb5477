"""Evaluation after pretraining: k-NN, linear probe, attention maps, video segmentation,
retrieval, copy detection.

- ``features``: frozen-backbone extraction, sharded over ranks and gathered; feature dumps.
- ``knn``: weighted k-NN with a streamed bank and a brute-force twin; ``knn_accuracy``.
- ``linear``: the linear probe (last-4-block CLS or CLS + mean patch tokens).
- ``attention``: last-block CLS attention per head, masks and PNG pictures.
- ``video_segmentation`` / ``davis_data`` / ``davis_metrics``: DAVIS-2017 label propagation
  and its J and F.
- ``retrieval``: revisited Oxford / Paris; ``copy_detection`` (+ ``whitening``): Copydays;
  ``ranking_metrics``: the average precision both use.
- ``datasets``: the evaluation splits and the probe's training view.

Weights are read through ``dino_core.formats`` (any supported file and layout).
"""
