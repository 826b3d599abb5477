"""The reference executor: ``build_loader(data, backend="reference")``.

    loader.py   PIL multi-crop (``pipelines.reference``, the fidelity oracle) in the
                workers of a torch DataLoader, over an ImageFolder tree

The plain CPU fallback and the baseline every other backend is held against: the same
order (``pipelines.order``), the same per-sample streams, views from PIL.
"""
