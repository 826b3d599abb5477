"""Compile an ``AugmentationSpec`` into a DALI graph that decodes and cuts views, nothing else.

Inputs per sample, both on the CPU: the encoded image (uint8 bytes) and its views' crop
boxes (float32 ``[num_views, 4]``, see ``boxes.py``: relative ROI, flip folded in). The graph

    decodes the image ONCE (``mixed`` = nvJPEG + hardware decoder on a GPU, ``cpu`` without)
    and for every view of ``spec.views()`` resizes its box straight from the decoded image
    (``resize`` with a per-sample relative ROI, ``spec.interpolation``, antialiased, uint8
    like PIL; a box whose left is past its right comes out mirrored: the flip)

and emits the views as uint8 ``[S, S, 3]`` (HWC). Operators: one decoder, and per view two
CPU slices of the box array (ROI start, ROI end) and one resize: ``3 * num_views + 1``, plus
one per external-source output (tests/pipelines/test_dali_graph.py holds it there).

The photometric finish (jitter, grayscale, blur, solarize, normalise) is NOT in the graph:
the loader runs ``pipelines.photometric.finish.finish_many`` on the views, on the same
device, with the sample's parameter rows. In the graph it cost about 100 operators per view,
most of them identity slots of a static jitter order that still touched every pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nvidia.dali.fn as fn
import nvidia.dali.types as types

from ..spec import AugmentationSpec

INTERPOLATION = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR,
                 "nearest": types.INTERP_NN}


@dataclass(frozen=True)
class DecoderOptions:
    """Decoder settings; the GPU ones apply to ``mixed`` decoding only.

    hw_decoder_load: share of JPEGs sent to the hardware JPEG decoder (A100, H100, H200);
        nvJPEG's CUDA decoder takes the rest, so both engines work at once.
    device_memory_padding / host_memory_padding: per-thread nvJPEG buffer sizes in bytes,
        preallocated so that a larger image does not force a reallocation mid-run.
    preallocate_width_hint / preallocate_height_hint: hardware decoder buffer hints
        (0 = DALI's default).
    """

    hw_decoder_load: float = 0.75
    device_memory_padding: int = 16 << 20
    host_memory_padding: int = 8 << 20
    preallocate_width_hint: int = 0
    preallocate_height_hint: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")
        for name in ("device_memory_padding", "host_memory_padding",
                     "preallocate_width_hint", "preallocate_height_hint"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def kwargs(self, decoder_device: str) -> dict:
        if decoder_device != "mixed":
            return {}
        return {"hw_decoder_load": self.hw_decoder_load,
                "device_memory_padding": self.device_memory_padding,
                "host_memory_padding": self.host_memory_padding,
                "preallocate_width_hint": self.preallocate_width_hint,
                "preallocate_height_hint": self.preallocate_height_hint}


def multicrop_graph(encoded: Any, boxes: Any, spec: AugmentationSpec, device: str,
                    decoder: DecoderOptions = DecoderOptions()) -> list[Any]:
    """The views of a batch: ``spec.num_views`` uint8 nodes ``[S, S, 3]`` in ``spec.views()``
    order, on the graph's device.

    encoded: CPU node, uint8 [num_bytes] per sample (JPEG, PNG, ... anything DALI decodes).
    boxes: CPU node, float32 [spec.num_views, 4] per sample (``boxes.view_boxes``).
    device: "cpu" (decode and resize on the CPU) or "gpu" (``mixed`` decode, resize on the
        GPU; the ROI slices stay on the CPU, where DALI wants per-sample arguments).
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"DALI graph device must be 'cpu' or 'gpu', got {device!r}")
    decoder_device = "mixed" if device == "gpu" else "cpu"
    # adjust_orientation=False: crop boxes are drawn for the stored size, as PIL reports it.
    decoded = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB,
                                adjust_orientation=False, **decoder.kwargs(decoder_device))
    interp = INTERPOLATION[spec.interpolation]
    return [fn.resize(decoded, roi_start=boxes[v, 0:2], roi_end=boxes[v, 2:4],
                      roi_relative=True, size=[view.size, view.size], interp_type=interp,
                      antialias=True, dtype=types.UINT8)
            for v, view in enumerate(spec.views())]

