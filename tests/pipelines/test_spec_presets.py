"""Named augmentation presets: DINOv2's crops (patch 14) from the one spec, by name in a spec
mapping or a training config; view sizes checked against the patch size."""
import pytest
import yaml

from pipelines.spec import (SPEC_PRESETS, AugmentationSpec, SpecError, ViewSpec,
                            expand_preset, spec_preset)


def test_dinov2_preset_is_dinov2s_crops():
    s = spec_preset("dinov2")
    assert [(v.size, v.scale) for v in s.global_views] == [(224, (0.32, 1.0))] * 2
    assert (s.local_view.size, s.local_view.scale, s.local_crops) == (98, (0.05, 0.32), 8)
    # blur as DINOv2's released models were trained (its GaussianBlur inverts p): 0, 0.9, 0.5
    assert [v.blur_p for v in s.global_views] + [s.local_view.blur_p] == [0.0, 0.9, 0.5]
    assert [v.solarize_p for v in s.global_views] == [0.0, 0.2]
    dino = AugmentationSpec()  # every photometric setting but blur p is DINO's
    assert (s.jitter, s.grayscale_p, s.blur_sigma, s.solarize_threshold, s.flip_p, s.ratio,
            s.interpolation, s.mean, s.std) == (
        dino.jitter, dino.grayscale_p, dino.blur_sigma, dino.solarize_threshold, dino.flip_p,
        dino.ratio, dino.interpolation, dino.mean, dino.std)
    s.check_patch_size(14)  # 224 = 16 x 14, 98 = 7 x 14
    assert spec_preset("dino") == AugmentationSpec() and set(SPEC_PRESETS) == {"dino", "dinov2"}


def test_a_preset_key_starts_from_the_preset(tmp_path):
    s = AugmentationSpec.from_dict({"preset": "dinov2", "local_crops": 4})
    assert s == spec_preset("dinov2").with_overrides(local_crops=4)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"preset": "dinov2", "flip_p": 0.0}))
    assert AugmentationSpec.load_yaml(tmp_path / "spec.yaml").flip_p == 0.0
    assert expand_preset({"flip_p": 0.0}) == {"flip_p": 0.0}  # no preset: unchanged
    with pytest.raises(SpecError, match="unknown preset 'dinov3'; choose from dino, dinov2"):
        AugmentationSpec.from_dict({"preset": "dinov3"})


def test_view_sizes_must_be_multiples_of_the_patch_size():
    with pytest.raises(SpecError, match=r"'local_view.size': 98 px is not a multiple of the "
                                        r"patch size 16"):
        spec_preset("dinov2").check_patch_size(16)
    odd = AugmentationSpec(global_views=(ViewSpec(224, (0.4, 1.0), 1.0, 0.0),
                                         ViewSpec(230, (0.4, 1.0), 0.1, 0.2)))
    with pytest.raises(SpecError, match=r"'global_views\[1\].size'"):
        odd.check_patch_size(16)
    AugmentationSpec(local_crops=0, local_view=ViewSpec(90, (0.05, 0.4), 0.5, 0.0)
                     ).check_patch_size(16)  # no local crops: their size is not used
