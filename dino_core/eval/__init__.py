"""Evaluation after pretraining: k-NN, linear probe, attention maps, checkpoint interchange.

- ``features``: frozen-backbone extraction, sharded over ranks and gathered; feature dumps.
- ``knn``: weighted k-NN with a streamed bank and a brute-force twin; ``knn_accuracy``.
- ``linear``: the linear probe (last-4-block CLS or CLS + mean patch tokens).
- ``attention``: last-block CLS attention per head, masks and PNG pictures.
- ``official``: read official DINO / backbone-only / project checkpoints; export backbones.
- ``datasets``: the evaluation splits and the probe's training view.
"""
