"""Compile an ``AugmentationSpec`` into a DALI multi-crop graph: decode once, then every view.

Inputs per sample: the encoded image (uint8 bytes) and its packed view parameters
(float32 ``[num_views, LAYOUT.width]``, see ``params.py``), both on the CPU. The graph

    decodes the image ONCE (``mixed`` = nvJPEG + hardware decoder on a GPU, ``cpu`` without)
    and for every view of ``spec.views()``:
      resized crop straight from the decoded image (``resize`` with a per-sample relative ROI,
        ``spec.interpolation``, antialiased, uint8 like PIL)
      colour jitter: the fixed op slots of ``params.JITTER_SLOTS`` with per-sample factors
      grayscale, gaussian blur (per-sample sigma and window), solarize
      flip + normalise (spec.mean/std) + HWC->CHW + cast, fused in ``crop_mirror_normalize``

Sizes, interpolation, threshold, mean and std come from the spec; every random decision
comes in with the parameters. An op whose probability is 0 for a view in the spec is left
out of that view's graph (it would be the identity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nvidia.dali.fn as fn
import nvidia.dali.types as types

from ..spec import AugmentationSpec, ViewSpec
from . import ops
from .params import JITTER_SLOTS, LAYOUT

INTERPOLATION = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR,
                 "nearest": types.INTERP_NN}
# DALI has no bfloat16: the graph emits float32 and the loader casts on the device.
OUTPUT_TYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}
_SLOT_OPS = {"B": ops.brightness, "S": ops.saturation, "C": ops.contrast, "H": ops.rotate_hue}


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


def jitter_enabled(spec: AugmentationSpec) -> bool:
    j = spec.jitter
    return j.p > 0.0 and (j.brightness > 0 or j.contrast > 0 or j.saturation > 0 or j.hue > 0)


def color_jitter(x: Any, row: Any, spec: AugmentationSpec) -> Any:
    """The fixed slot sequence; a slot whose op has strength 0 in the spec is left out."""
    strength = {"B": spec.jitter.brightness, "C": spec.jitter.contrast,
                "S": spec.jitter.saturation, "H": spec.jitter.hue}
    for i, letter in enumerate(JITTER_SLOTS):
        if strength[letter] > 0:
            x = _SLOT_OPS[letter](x, row[LAYOUT.slots + i])
    return x


def _view(decoded: Any, row: Any, spec: AugmentationSpec, view: ViewSpec, out_dtype: Any
          ) -> Any:
    """One view: decoded uint8 ``[H, W, 3]`` + its packed row -> ``[3, S, S]`` normalised."""
    x = fn.resize(decoded, roi_start=row[LAYOUT.box:LAYOUT.box + 2],
                  roi_end=row[LAYOUT.box + 2:LAYOUT.box + 4], roi_relative=True,
                  size=[view.size, view.size], interp_type=INTERPOLATION[spec.interpolation],
                  antialias=True, dtype=types.UINT8)
    if jitter_enabled(spec):
        x = color_jitter(x, row, spec)
    if spec.grayscale_p > 0.0:
        x = ops.grayscale(x, row[LAYOUT.gray])
    if view.blur_p > 0.0:
        x = ops.gaussian_blur(x, row[LAYOUT.sigma], row[LAYOUT.window])
    if view.solarize_p > 0.0:
        x = ops.solarize(x, row[LAYOUT.solarize], float(spec.solarize_threshold))
    return ops.normalize(x, row[LAYOUT.flip], spec.mean, spec.std, out_dtype)


def multicrop_graph(encoded: Any, params: Any, spec: AugmentationSpec, device: str,
                    decoder: DecoderOptions = DecoderOptions()) -> list[Any]:
    """The views of a batch: ``spec.num_views`` nodes ``[3, S, S]`` in ``spec.views()`` order.

    encoded: CPU node, uint8 [num_bytes] per sample (JPEG, PNG, ... anything DALI decodes).
    params: CPU node, float32 [spec.num_views, LAYOUT.width] per sample.
    device: "cpu" (decode and ops on the CPU) or "gpu" (``mixed`` decode, ops on the GPU).
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"DALI graph device must be 'cpu' or 'gpu', got {device!r}")
    decoder_device = "mixed" if device == "gpu" else "cpu"
    # adjust_orientation=False: crop boxes are drawn for the stored size, as PIL reports it.
    decoded = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB,
                                adjust_orientation=False, **decoder.kwargs(decoder_device))
    out_dtype = OUTPUT_TYPES[spec.output_dtype]
    return [_view(decoded, params[v], spec, view, out_dtype)
            for v, view in enumerate(spec.views())]
