import pytest
import yaml

from dino_core.config import TrainConfig, load_config
from pipelines.config_io import ConfigError


def test_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.model.arch, c.model.patch_size, c.model.out_dim) == ("vit_small", 16, 65536)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs) == (0.0005, 1e-6, 10)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.clip_grad) == (0.04, 0.4, 3.0)
    assert (c.optim.momentum_teacher, c.optim.freeze_last_layer) == (0.996, 1)
    assert (c.loss.student_temp, c.loss.teacher_temp, c.loss.center_momentum) == (0.1, 0.04, 0.9)
    assert c.data.aug.num_views == 12 and c.model.drop_path_rate == 0.1


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"epochs": 3, "model": {"arch": "vit_tiny"},
                                 "data": {"aug": {"local_crops": 4}}}))
    c = load_config(f, ["epochs=5", "optim.lr=0.001", "data.path=/x"])
    assert (c.epochs, c.model.arch, c.data.aug.local_crops) == (5, "vit_tiny", 4)
    assert c.optim.lr == 0.001 and c.data.path == "/x" and c.model.patch_size == 16


def test_round_trip_through_yaml(tmp_path):
    c = load_config(None, ["model.arch=vit_tiny", "data.aug.local_crops=2"])
    c.save_yaml(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c


@pytest.mark.parametrize("override,field", [
    ("optim.lrr=1", "optim.lrr"), ("epochs=x", "epochs"), ("model.arch=vit_huge", "model.arch"),
    ("data.backend=tf", "data.backend"), ("data.aug.flip_p=3", "flip_p"),
    ("precision=int8", "precision"), ("knn_eval=maybe", "knn_eval"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_file_and_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(f)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["epochs"])
