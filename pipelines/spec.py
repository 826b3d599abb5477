"""The shared multi-crop augmentation spec: one typed description, compiled into every executor.

Defaults are the DINO reference recipe (Caron et al. 2021, arXiv 2104.14294):

    view      size  crop scale    blur p  solarize p
    global 1  224   (0.4, 1.0)    1.0     0.0
    global 2  224   (0.4, 1.0)    0.1     0.2
    local xN   96   (0.05, 0.4)   0.5     0.0

and for every view: random resized crop (ratio 3/4..4/3, bicubic), horizontal flip p=0.5,
colour jitter with p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random op
order), grayscale p=0.2, gaussian blur sigma in [0.1, 2.0], solarize threshold 128, then
ImageNet normalisation.

Named presets (``SPEC_PRESETS``, ``spec_preset(name)``): ``dino`` (the defaults above) and
``dinov2`` (``dinov2_spec``). A spec mapping (YAML) may name one with a ``preset`` key; its
other keys then change that preset (``expand_preset``), e.g. ``{preset: dinov2,
local_crops: 4}``; the training config takes the same in its ``data.aug`` section.

Executors (reference PIL, DALI, FFCV + batched tensor ops) read every number from here; none
of them restates a parameter. ``AugmentationSpec.views()`` expands the recipe into the
ordered list of per-view specs: the global views first, then ``local_crops`` local views.

``masking`` (off by default, and then absent from the spec's YAML): block-wise patch masks of
the global views for masked-image-modelling recipes (iBOT / DINOv2), drawn by the loader
(``pipelines.sampling.masks``); see ``MaskingSpec``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

import yaml

from .config_io import deep_merge, from_plain, to_plain, yaml_problem

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")


S = TypeVar("S", bound=Hashable)


def size_runs(sizes: Sequence[S]) -> list[tuple[int, int, S]]:
    """Runs of consecutive equal sizes, in order: ``(first index, count, size)`` each.

    The one definition of a resolution group: the views of one run are stacked and
    finished together by the loaders, and go through the backbone in one pass
    (``MultiCropWrapper``). ``sizes`` may be view sizes (ints) or tensor shapes, e.g.
    ``[224, 224, 96, 96, 96]`` -> ``[(0, 2, 224), (2, 3, 96)]``.
    """
    runs: list[tuple[int, int, S]] = []
    for i, size in enumerate(sizes):
        if runs and runs[-1][2] == size:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, size)
        else:
            runs.append((i, 1, size))
    return runs


class SpecError(ValueError):
    """An invalid augmentation spec value; the message names the field."""


def _check(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise SpecError(f"augmentation spec field '{field_name}': {msg}")


def _check_prob(value: float, field_name: str) -> None:
    _check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, field_name,
           f"must be a probability in [0, 1], got {value!r}")


def _check_range(value: tuple, field_name: str, lo: float, hi: float) -> None:
    ok = (isinstance(value, tuple) and len(value) == 2
          and all(isinstance(v, (int, float)) for v in value))
    _check(ok, field_name, f"must be a pair (min, max) of numbers, got {value!r}")
    _check(lo <= value[0] <= value[1] <= hi, field_name,
           f"must satisfy {lo} <= min <= max <= {hi}, got {value!r}")


@dataclass(frozen=True)
class ViewSpec:
    """One view: the crop it takes and the per-view photometric probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float

    def validate(self, prefix: str) -> None:
        _check(isinstance(self.size, int) and self.size >= 8, f"{prefix}.size",
               f"must be an integer >= 8, got {self.size!r}")
        _check_range(self.scale, f"{prefix}.scale", 1e-6, 1.0)
        _check(self.scale[0] > 0, f"{prefix}.scale", "minimum must be > 0")
        _check_prob(self.blur_p, f"{prefix}.blur_p")
        _check_prob(self.solarize_p, f"{prefix}.solarize_p")


@dataclass(frozen=True)
class ColorJitterSpec:
    """Colour jitter applied with probability ``p``; the four ops run in a random order.

    brightness/contrast/saturation factors are drawn uniformly in [1-x, 1+x] (clipped at 0);
    the hue shift is drawn in [-hue, hue] of a full turn (true HSV hue rotation). Contrast
    blends toward the mean of the grayscale image, as the reference does.
    """

    p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1

    def validate(self, prefix: str) -> None:
        _check_prob(self.p, f"{prefix}.p")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and v >= 0, f"{prefix}.{name}",
                   f"must be a number >= 0, got {v!r}")
        _check(isinstance(self.hue, (int, float)) and 0 <= self.hue <= 0.5, f"{prefix}.hue",
               f"must be in [0, 0.5] (fraction of a turn), got {self.hue!r}")


@dataclass(frozen=True)
class MaskingSpec:
    """Block-wise masks of the global views' patch grids, DINOv2's defaults (Oquab et al.
    2023, arXiv 2304.07193; the block generator is BEiT's, Bao et al. 2021).

    Per batch, ``int(probability * G)`` of its ``G = num_global * B`` global crops are masked
    (the others not at all), crop i of them aiming at ``int(N * r_i)`` of its ``N`` patches
    with ``r_i`` uniform in the i-th of equal parts of ``ratio`` (so the ratios spread over
    the whole range in every batch); the masked crops land at random rows. A crop's mask is
    the union of rectangles: each of area uniform in [``min_block_patches``, the patches
    still to mask, at most ``max_block_fraction * N``] and aspect ratio log-uniform in
    ``aspect``, strictly smaller than the grid; ``pipelines.sampling.masks`` has the exact
    draw. ``patch_size``: the backbone's, which turns a global view's size into its grid.
    """

    patch_size: int = 16
    probability: float = 0.5
    ratio: tuple[float, float] = (0.1, 0.5)
    min_block_patches: int = 4
    max_block_fraction: float = 0.5
    aspect: tuple[float, float] = (0.3, 1 / 0.3)

    def validate(self, prefix: str) -> None:
        _check(isinstance(self.patch_size, int) and not isinstance(self.patch_size, bool)
               and self.patch_size >= 1, f"{prefix}.patch_size",
               f"must be an integer >= 1, got {self.patch_size!r}")
        _check_prob(self.probability, f"{prefix}.probability")
        _check_range(self.ratio, f"{prefix}.ratio", 0.0, 1.0)
        _check(isinstance(self.min_block_patches, int) and self.min_block_patches >= 1,
               f"{prefix}.min_block_patches",
               f"must be an integer >= 1, got {self.min_block_patches!r}")
        _check(isinstance(self.max_block_fraction, (int, float))
               and 0 < self.max_block_fraction <= 1, f"{prefix}.max_block_fraction",
               f"must be in (0, 1], got {self.max_block_fraction!r}")
        _check_range(self.aspect, f"{prefix}.aspect", 1e-3, 1e3)
        _check(self.aspect[0] > 0, f"{prefix}.aspect", "minimum must be > 0")


def _default_globals() -> tuple[ViewSpec, ...]:
    return (ViewSpec(224, (0.4, 1.0), blur_p=1.0, solarize_p=0.0),
            ViewSpec(224, (0.4, 1.0), blur_p=0.1, solarize_p=0.2))


@dataclass(frozen=True)
class AugmentationSpec:
    """The whole DINO multi-crop recipe. Frozen; validated on construction."""

    global_views: tuple[ViewSpec, ...] = field(default_factory=_default_globals)
    local_view: ViewSpec = ViewSpec(96, (0.05, 0.4), blur_p=0.5, solarize_p=0.0)
    local_crops: int = 10
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter: ColorJitterSpec = ColorJitterSpec()
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_threshold: int = 128
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    output_dtype: str = "float32"
    # None: no masks (DINO); omitted from the YAML then, so DINO's spec files are unchanged.
    masking: MaskingSpec | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        _check(isinstance(self.global_views, tuple) and len(self.global_views) >= 1,
               "global_views", "must be a non-empty list of views")
        for i, v in enumerate(self.global_views):
            _check(isinstance(v, ViewSpec), f"global_views[{i}]", "must be a view")
            v.validate(f"global_views[{i}]")
        _check(isinstance(self.local_view, ViewSpec), "local_view", "must be a view")
        self.local_view.validate("local_view")
        _check(isinstance(self.local_crops, int) and not isinstance(self.local_crops, bool)
               and self.local_crops >= 0, "local_crops",
               f"must be an integer >= 0, got {self.local_crops!r}")
        _check_range(self.ratio, "ratio", 1e-3, 1e3)
        _check(self.interpolation in INTERPOLATIONS, "interpolation",
               f"must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        _check_prob(self.flip_p, "flip_p")
        _check(isinstance(self.jitter, ColorJitterSpec), "jitter", "must be a jitter spec")
        self.jitter.validate("jitter")
        _check_prob(self.grayscale_p, "grayscale_p")
        _check_range(self.blur_sigma, "blur_sigma", 1e-3, 100.0)
        _check(isinstance(self.solarize_threshold, int) and 0 <= self.solarize_threshold <= 256,
               "solarize_threshold", f"must be an integer in [0, 256], got {self.solarize_threshold!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            _check(isinstance(v, tuple) and len(v) == 3
                   and all(isinstance(x, (int, float)) for x in v), name,
                   f"must be three numbers (R, G, B), got {v!r}")
        _check(all(s > 0 for s in self.std), "std", "every entry must be > 0")
        _check(self.output_dtype in OUTPUT_DTYPES, "output_dtype",
               f"must be one of {OUTPUT_DTYPES}, got {self.output_dtype!r}")
        if self.masking is not None:
            _check(isinstance(self.masking, MaskingSpec), "masking", "must be a masking spec")
            self.masking.validate("masking")
            sizes = {v.size for v in self.global_views}
            _check(len(sizes) == 1, "masking",
                   f"masks need one global view size (one patch grid), got {sorted(sizes)}")
            p = self.masking.patch_size
            _check(self.global_views[0].size % p == 0, "masking.patch_size",
                   f"global view size {self.global_views[0].size} is not a multiple of the "
                   f"patch size {p}")

    # ----------------------------------------------------------------- views
    @property
    def num_global(self) -> int:
        return len(self.global_views)

    @property
    def num_views(self) -> int:
        return len(self.global_views) + self.local_crops

    def views(self) -> list[ViewSpec]:
        """Per-view specs in output order: globals first, then the local crops."""
        return list(self.global_views) + [self.local_view] * self.local_crops

    @property
    def mask_grid(self) -> tuple[int, int]:
        """(rows, columns) of a global view's patch grid, the shape of one mask (masking on)."""
        if self.masking is None:
            raise ValueError("the spec has no masking section: no mask grid")
        side = self.global_views[0].size // self.masking.patch_size
        return side, side

    def size_runs(self) -> list[tuple[int, int, int]]:
        """Runs of consecutive views of one size, ``(first view, views, size)``: each is
        stacked into one tensor and finished in one call by the loaders (``size_runs``)."""
        return size_runs([view.size for view in self.views()])

    def check_patch_size(self, patch_size: int) -> None:
        """Every view size must be a multiple of the ViT's ``patch_size`` (the model refuses
        other inputs): one SpecError naming the first view that is not."""
        named = [(f"global_views[{i}].size", v.size) for i, v in enumerate(self.global_views)]
        if self.local_crops:
            named.append(("local_view.size", self.local_view.size))
        for name, size in named:
            _check(size % patch_size == 0, name,
                   f"{size} px is not a multiple of the patch size {patch_size}")

    def with_overrides(self, **changes: Any) -> "AugmentationSpec":
        """A copy with top-level fields replaced (validated)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- YAML
    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentationSpec":
        """From plain data; a ``preset`` key starts from that preset (``expand_preset``)."""
        return from_plain(cls, expand_preset(data or {}), "augmentation spec", SpecError)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | Path) -> "AugmentationSpec":
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"augmentation spec file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpecError(f"augmentation spec file {path} is not valid YAML: "
                            f"{yaml_problem(e)}") from None
        if data is not None and not isinstance(data, dict):
            raise SpecError(f"augmentation spec file {path} must hold a mapping at top level")
        return cls.from_dict(data)


def dinov2_spec() -> AugmentationSpec:
    """DINOv2's multi-crop recipe at patch 14 (Oquab et al. 2023; facebookresearch/dinov2,
    ``ssl_default_config.yaml`` ``crops``, ``configs/train/vitl14.yaml`` / ``vitg14.yaml``
    and ``data/augmentations.py``):

        view      size  crop scale    blur p  solarize p
        global 1  224   (0.32, 1.0)   0.0     0.0
        global 2  224   (0.32, 1.0)   0.9     0.2
        local x8   98   (0.05, 0.32)  0.5     0.0

    Sizes: 224 = 16 x 14 and 98 = 7 x 14 patches (DINOv2's patch-16 default is 96 px local
    crops: set ``local_view.size`` with the patch size). Blur probabilities: DINOv2's code
    names 1.0 / 0.1 / 0.5 (DINO's), but its ``GaussianBlur`` hands ``1 - p`` to torchvision's
    ``RandomApply``, which applies with the probability it is given, so the released models
    were trained with 0.0 / 0.9 / 0.5 (facebookresearch/dinov2 PR #411; confirmed for the
    same code in DINOv3, facebookresearch/dinov3 issue #286): this preset states what was
    trained. Every other setting equals DINO's (the defaults): ratio 3/4..4/3, bicubic, flip
    0.5, colour jitter 0.8 x (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur sigma 0.1..2.0,
    solarize threshold 128, ImageNet mean/std. Masks (iBOT term): DINOv2's defaults
    (``MaskingSpec``) at patch 14. Not represented: DINOv2 blurs with
    torchvision's 9-tap kernel (radius 4 px), this project with a window of 3 sigma
    (``photometric/torch_ops.py``): equal up to the tails for sigma <= 4/3, wider above.
    """
    return AugmentationSpec(
        global_views=(ViewSpec(224, (0.32, 1.0), blur_p=0.0, solarize_p=0.0),
                      ViewSpec(224, (0.32, 1.0), blur_p=0.9, solarize_p=0.2)),
        local_view=ViewSpec(98, (0.05, 0.32), blur_p=0.5, solarize_p=0.0),
        local_crops=8, masking=MaskingSpec(patch_size=14))  # DINOv2's masks, 16 x 16 grids


SPEC_PRESETS: dict[str, Callable[[], AugmentationSpec]] = {
    "dino": AugmentationSpec,
    "dinov2": dinov2_spec,
}


def spec_preset(name: str) -> AugmentationSpec:
    """The named preset spec (``SPEC_PRESETS``)."""
    if name not in SPEC_PRESETS:
        raise SpecError(f"augmentation spec field 'preset': unknown preset {name!r}; choose "
                        f"from {', '.join(SPEC_PRESETS)}")
    return SPEC_PRESETS[name]()


def expand_preset(data: dict) -> dict:
    """A spec mapping with its ``preset`` key (if any) replaced by that preset's fields, the
    mapping's other keys merged over them; a mapping without one is returned as is."""
    if not isinstance(data, dict) or "preset" not in data:
        return data
    rest = {k: v for k, v in data.items() if k != "preset"}
    name = data["preset"]
    if not isinstance(name, str):
        raise SpecError(f"augmentation spec field 'preset': expected a preset name, got {name!r}")
    return deep_merge(spec_preset(name).to_dict(), rest)
