"""The augmentation spec: recipe defaults, validation naming the field, YAML round trip."""
import dataclasses
import re

import pytest
import yaml

from pipelines.spec import AugmentationSpec, ColorJitterSpec, SpecError, ViewSpec, size_runs


def test_defaults_are_the_dino_recipe():
    """The table in dino_recipe.md, field by field."""
    s = AugmentationSpec()
    assert [(v.size, v.scale, v.blur_p, v.solarize_p) for v in s.global_views] == [
        (224, (0.4, 1.0), 1.0, 0.0), (224, (0.4, 1.0), 0.1, 0.2)]
    lv = s.local_view
    assert (lv.size, lv.scale, lv.blur_p, lv.solarize_p) == (96, (0.05, 0.4), 0.5, 0.0)
    assert s.local_crops == 10
    assert s.ratio == pytest.approx((3 / 4, 4 / 3))
    assert s.interpolation == "bicubic"
    assert s.flip_p == 0.5
    assert dataclasses.astuple(s.jitter) == (0.8, 0.4, 0.4, 0.2, 0.1)
    assert s.grayscale_p == 0.2
    assert s.blur_sigma == (0.1, 2.0)
    assert s.solarize_threshold == 128
    assert s.mean == (0.485, 0.456, 0.406)
    assert s.std == (0.229, 0.224, 0.225)
    assert s.output_dtype == "float32"


def test_views_are_globals_first_then_locals():
    s = AugmentationSpec(local_crops=3)
    views = s.views()
    assert views == [*s.global_views, s.local_view, s.local_view, s.local_view]
    assert (s.num_global, s.num_views) == (2, 5)
    assert AugmentationSpec(local_crops=0).views() == list(s.global_views)


def test_size_runs_are_the_runs_of_one_view_size():
    small = AugmentationSpec(global_views=(ViewSpec(32, (0.4, 1.0), 1.0, 0.0),
                                           ViewSpec(32, (0.4, 1.0), 0.1, 0.2)),
                             local_view=ViewSpec(16, (0.05, 0.4), 0.5, 0.0), local_crops=2)
    assert small.size_runs() == [(0, 2, 32), (2, 2, 16)]
    mixed = AugmentationSpec(global_views=(ViewSpec(32, (0.4, 1.0), 1.0, 0.0),
                                           ViewSpec(24, (0.4, 1.0), 0.1, 0.2)),
                             local_view=ViewSpec(24, (0.05, 0.4), 0.5, 0.0), local_crops=3)
    assert mixed.size_runs() == [(0, 1, 32), (1, 4, 24)]
    assert AugmentationSpec(local_crops=0).size_runs() == [(0, 2, 224)]


def test_size_runs_take_shapes_and_never_merge_apart_runs():
    """Runs are consecutive: a size seen again after another starts a new run (the
    multi-crop wrapper groups tensor shapes with the same function)."""
    assert size_runs([(8, 8), (8, 8), (4, 4), (8, 8)]) == [(0, 2, (8, 8)), (2, 1, (4, 4)),
                                                          (3, 1, (8, 8))]
    assert size_runs([]) == []


@pytest.mark.parametrize("changes, field", [
    ({"flip_p": 1.5}, "flip_p"),
    ({"grayscale_p": -0.1}, "grayscale_p"),
    ({"local_crops": -1}, "local_crops"),
    ({"local_crops": True}, "local_crops"),
    ({"interpolation": "lanczos"}, "interpolation"),
    ({"output_dtype": "int8"}, "output_dtype"),
    ({"ratio": (2.0, 1.0)}, "ratio"),
    ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
    ({"solarize_threshold": 300}, "solarize_threshold"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"global_views": ()}, "global_views"),
    ({"jitter": ColorJitterSpec(hue=0.7)}, "jitter.hue"),
    ({"jitter": ColorJitterSpec(p=2.0)}, "jitter.p"),
    ({"jitter": ColorJitterSpec(contrast=-1.0)}, "jitter.contrast"),
    ({"local_view": ViewSpec(4, (0.05, 0.4), 0.5, 0.0)}, "local_view.size"),
    ({"local_view": ViewSpec(96, (0.5, 0.4), 0.5, 0.0)}, "local_view.scale"),
    ({"global_views": (ViewSpec(224, (0.4, 1.0), 1.5, 0.0),)}, "global_views[0].blur_p"),
])
def test_bad_field_raises_spec_error_naming_it(changes, field):
    with pytest.raises(SpecError, match=re.escape(f"'{field}'")):
        AugmentationSpec().with_overrides(**changes)


def test_yaml_round_trip(tmp_path):
    spec = AugmentationSpec(local_crops=6, flip_p=0.25, jitter=ColorJitterSpec(hue=0.05),
                            global_views=(ViewSpec(160, (0.3, 1.0), 0.5, 0.1),))
    path = tmp_path / "spec.yaml"
    spec.save_yaml(path)
    assert AugmentationSpec.load_yaml(path) == spec
    assert AugmentationSpec.load_yaml(path).global_views[0].scale == (0.3, 1.0)  # tuples back


def test_partial_yaml_keeps_defaults(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("local_crops: 4\njitter:\n  hue: 0.0\n")
    spec = AugmentationSpec.load_yaml(path)
    assert spec == AugmentationSpec(local_crops=4, jitter=ColorJitterSpec(hue=0.0))


@pytest.mark.parametrize("data, field", [
    ({"flip_prob": 0.5}, "flip_prob"),
    ({"jitter": {"hue_shift": 0.1}}, "jitter.hue_shift"),
    ({"flip_p": "high"}, "flip_p"),
    ({"local_crops": 2.5}, "local_crops"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"interpolation": 3}, "interpolation"),
    ({"jitter": 0.4}, "jitter"),
    ({"global_views": [{"size": "big", "scale": [0.4, 1.0], "blur_p": 1.0,
                        "solarize_p": 0.0}]}, "global_views[0].size"),
])
def test_bad_yaml_names_the_field(tmp_path, data, field):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=re.escape(f"'{field}'")):
        AugmentationSpec.load_yaml(path)


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="nope.yaml"):
        AugmentationSpec.load_yaml(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("flip_p: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        AugmentationSpec.load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="list.yaml"):
        AugmentationSpec.load_yaml(listy)


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AugmentationSpec().flip_p = 0.0  # type: ignore[misc]
