"""The FFCV executor: .beton -> one JPEG decode per image -> every multi-crop view -> the
photometric finish, in the op on the CPU or by ``finish_many`` on the device.

- ``loader.build_ffcv_loader``: what ``pipelines.build_loader(..., backend="ffcv")`` calls.
- ``decode_once.MultiCropDecoder``: the FFCV operation (decode once, cut all views).
- ``resample``: its compiled resampling, with a plain twin. Its randomness is the project's
  one counter stream, drawn by ``pipelines.sampling.compiled_draw`` (twin: ``pipelines.sampling``).
- ``slots``: FFCV's reused batch buffers refilled only after the copies out of them.
- ``reader_fix``: a fix for FFCV's OS-cache reader. The epoch order is every backend's
  (``pipelines.order``), given to FFCV as a custom traversal order.

Importing this package imports nothing from FFCV; ``loader``, ``decode_once`` and ``slots``
do.
"""
