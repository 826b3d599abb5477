"""DINOv2's model presets and the config mechanics they use: ``extends``, an augmentation
preset in ``data.aug``, the backbone options and their checks."""
import pytest
import yaml

from dino_core.config import PRESETS_DIR, ModelConfig, TrainConfig, load_config
from pipelines.config_io import ConfigError
from pipelines.spec import spec_preset

PRESETS = {f"dinov2_vit{s}14{r}": (arch, 4 if r else 0)
           for s, arch in (("s", "vit_small"), ("b", "vit_base"), ("l", "vit_large"))
           for r in ("", "_reg4")}


def load_preset(name, overrides=()):
    """The preset as shipped, under the recipe it names (dinov2)."""
    return load_config(PRESETS_DIR / f"{name}.yaml", list(overrides))


@pytest.mark.parametrize("name", PRESETS)
def test_dinov2_presets_load_with_dinov2s_settings(name):
    arch, registers = PRESETS[name]
    c = load_preset(name)
    m, o = c.model, c.optim
    assert c.recipe == "dinov2" and c.data.aug.masking.patch_size == 14
    assert load_preset(name, ["recipe=dino"]).recipe == "dino"  # DINO on DINOv2's sections
    assert (m.arch, m.patch_size, m.img_size, m.register_tokens) == (arch, 14, 518, registers)
    assert (m.layerscale, m.ffn_layer, m.drop_path_uniform) == (1e-5, "mlp", True)
    assert (m.interpolate_offset, m.interpolate_antialias) == ((0.0, True) if registers
                                                               else (0.1, False))
    assert c.data.aug == spec_preset("dinov2")
    assert (o.layer_decay, o.patch_embed_lr_mult, o.lr, o.lr_scaling) == (0.9, 0.2, 0.004, "sqrt")
    assert (o.momentum_teacher, o.weight_decay, o.weight_decay_end) == (0.992, 0.04, 0.4)
    assert (o.clip_grad, o.clip_mode, o.freeze_last_layer, o.freeze_mode) == (
        3.0, "per_part", 1, "zero_lr")
    assert m.drop_path_rate == (0.3 if arch == "vit_large" else 0.1)


def test_extends_layers_files_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"epochs": 3, "model": {"arch": "vit_tiny", "patch_size": 8},
         "data": {"aug": {"preset": "dinov2", "local_crops": 2}}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(
        {"extends": "base.yaml", "model": {"patch_size": 14}, "data": {"aug": {"flip_p": 0.0}}}))
    c = load_config(tmp_path / "child.yaml", ["epochs=4"])
    assert (c.epochs, c.model.arch, c.model.patch_size) == (4, "vit_tiny", 14)
    assert c.data.aug == spec_preset("dinov2").with_overrides(local_crops=2, flip_p=0.0)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "c.yaml")


def test_an_aug_preset_on_the_command_line_replaces_the_section_first():
    c = load_config(None, ["data.aug.local_crops=2", "model.patch_size=14",
                           "data.aug.preset=dinov2"])
    assert c.data.aug == spec_preset("dinov2").with_overrides(local_crops=2)
    with pytest.raises(ConfigError, match="unknown preset 'dinov9'"):
        load_config(None, ["data.aug.preset=dinov9"])


def test_dino_defaults_are_unchanged_and_build_the_dino_vit():
    m = ModelConfig()
    assert m.vit_options() == {"layerscale": 0.0, "num_register_tokens": 0, "ffn_layer": "mlp",
                               "drop_path_uniform": False, "interpolate_offset": 0.1,
                               "interpolate_antialias": False}
    o = TrainConfig().optim
    assert (o.layer_decay, o.patch_embed_lr_mult, o.lr_scaling) == (1.0, 1.0, "linear")
    assert (o.clip_mode, o.freeze_mode) == ("per_tensor", "drop_grad")


@pytest.mark.parametrize("override,field", [
    ("model.img_size=500", "model.img_size"), ("model.layerscale=-1", "model.layerscale"),
    ("model.register_tokens=-4", "model.register_tokens"), ("model.ffn_layer=geglu", "ffn_layer"),
    ("model.interpolate_offset=-0.1", "model.interpolate_offset"),
    ("model.patch_size=14", "local_view.size"),  # 224 px is 16 patches of 14, 96 px not
])
def test_bad_backbone_options_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])
