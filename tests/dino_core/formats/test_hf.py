"""The Hugging Face ViT layout, without transformers: names both ways, q/k/v split and
joined bit-exactly, the model directory written and read, every tensor placed or an error.
(test_transformers_interop.py holds the same files against the real library.)"""
import json

import pytest
import torch

pytest.importorskip("safetensors", reason="safetensors is not installed (the interop extra)")

from dino_core.formats import (FORMATS, CheckpointError, detect_format,  # noqa: E402
                               export_backbone, load_backbone, read_checkpoint)
from dino_core.formats import hf  # noqa: E402
from dino_core.formats.files import save_checkpoint  # noqa: E402
from dino_core.formats.safetensors_io import read_safetensors  # noqa: E402
from dino_core.models import build_vit  # noqa: E402


def canonical_state(arch="vit_tiny", patch=16, img_size=32, seed=0):
    """A canonical backbone whose every tensor is random (norms and biases too, so a
    swapped or dropped one shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # shapes only
        shapes = {k: v.shape for k, v in build_vit(arch, patch, img_size=img_size)
                  .state_dict().items()}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_names_both_ways_and_the_round_trip_is_bit_identical():
    state = canonical_state()
    names = hf.from_canonical(state)
    assert len(names) == len(state) + 2 * 2 * 12  # qkv weight and bias: 3 tensors each
    assert names["embeddings.position_embeddings"] is state["pos_embed"]
    q, k, v = (names[f"encoder.layer.3.attention.attention.{n}.weight"]
               for n in ("query", "key", "value"))
    assert torch.equal(torch.cat([q, k, v]), state["blocks.3.attn.qkv.weight"])
    assert torch.equal(names["encoder.layer.3.intermediate.dense.weight"],
                       state["blocks.3.mlp.fc1.weight"])
    assert torch.equal(names["encoder.layer.3.output.dense.bias"], state["blocks.3.mlp.fc2.bias"])
    assert torch.equal(names["encoder.layer.3.attention.output.dense.bias"],
                       state["blocks.3.attn.proj.bias"])
    assert detect_format(names, "x") is FORMATS["hf"]
    back = hf.to_canonical(names, "x")
    assert back.head is None and back.backbone.keys() == state.keys()
    for key, value in state.items():  # bits, not values: -0.0 and NaN payloads included
        assert torch.equal(back.backbone[key].view(torch.int32), value.view(torch.int32)), key


def test_task_model_prefix_and_transformers_5_module_names_are_read():
    state = canonical_state(seed=1)
    hub = hf.from_canonical(state)
    task = {"vit." + k: v for k, v in hub.items()}
    task["classifier.weight"], task["classifier.bias"] = torch.zeros(10, 192), torch.zeros(10)
    task["vit.pooler.dense.weight"] = torch.zeros(192, 192)
    live = {}  # what transformers 5.x ViTModel.state_dict() names them
    renames = {v: k for k, v in hf.MODULE_NAMES.items()}
    for key, value in hub.items():
        m = hf._HUB_BLOCK.match(key)
        part = m and renames.get(m.group(2), m.group(2))
        live[f"layers.{m.group(1)}.{part}.{m.group(3)}" if m else key] = value
    assert any(k.startswith("layers.0.attention.q_proj") for k in live)
    for variant in (task, live):
        got = hf.to_canonical(variant, "x").backbone
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], v) for k, v in state.items())


def test_a_tensor_without_a_place_or_a_missing_projection_is_an_error():
    hub = hf.from_canonical(canonical_state())
    extra = dict(hub, **{"encoder.layer.0.attention.attention.rel_pos.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\).*no place.*rel_pos"):
        hf.to_canonical(extra, "w.safetensors")
    no_value = {k: v for k, v in hub.items() if k != "encoder.layer.5.attention.attention.value.bias"}
    with pytest.raises(CheckpointError, match="layer 5 has attention query, key bias but no value"):
        hf.to_canonical(no_value, "w.safetensors")
    with pytest.raises(CheckpointError, match="mask_token.*no place"):
        hf.from_canonical(dict(canonical_state(), mask_token=torch.zeros(1, 192)))


def test_directory_export_config_and_read_back(tmp_path):
    state = canonical_state("vit_small", 8, img_size=64, seed=2)
    save_checkpoint(state, tmp_path / "b.pth")
    export_backbone(tmp_path / "b.pth", tmp_path / "hf", layout="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "intermediate_size", "patch_size", "image_size",
                                   "layer_norm_eps", "qkv_bias", "hidden_act")} == {
        "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
        "intermediate_size": 1536, "patch_size": 8, "image_size": 64,
        "layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_act": "gelu"}
    assert config["architectures"] == ["ViTModel"] and config["model_type"] == "vit"
    weights = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert set(weights) == set(hf.from_canonical(state))
    for path in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):  # dir, or its file
        model, ck = load_backbone(path)
        assert (ck.layout, ck.name, ck.kind) == ("hf", "vit_small/8", "backbone")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    export_backbone(tmp_path / "hf", tmp_path / "again.pth")  # official -> hf -> official
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()


def test_a_directory_with_another_model_or_no_weights_is_one_error(tmp_path, caplog):
    save_checkpoint(canonical_state(), tmp_path / "b.pth")
    export_backbone(tmp_path / "b.pth", tmp_path / "hf", layout="hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    cases = {"model_type": ("swin", "model_type is 'swin'"),
             "hidden_act": ("relu", "hidden_act is 'relu'"),
             "num_attention_heads": (4, "4 attention heads for hidden size 192, where "
                                        "vit_tiny has 3")}
    for field, (value, message) in cases.items():
        config_path.write_text(json.dumps(dict(config, **{field: value})))
        with pytest.raises(CheckpointError, match=message) as e:
            read_checkpoint(tmp_path / "hf")
        assert str(config_path) in str(e.value) and "\n" not in str(e.value)
    config_path.write_text(json.dumps(dict(config, layer_norm_eps=1e-12)))
    read_checkpoint(tmp_path / "hf")
    assert "layer_norm_eps is 1e-12, this ViT uses 1e-06" in caplog.text
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="config.json but no weights"):
        read_checkpoint(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="without config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="writes a directory"):
        export_backbone(tmp_path / "b.pth", tmp_path / "file", layout="hf")


def test_sharded_safetensors_directory_is_read(tmp_path):
    from dino_core.formats.safetensors_io import write_safetensors
    state = canonical_state(seed=4)
    hub = hf.from_canonical(state)
    keys = sorted(hub)
    halves = {"model-00001-of-00002.safetensors": keys[:40],
              "model-00002-of-00002.safetensors": keys[40:]}
    (tmp_path / "hf").mkdir()
    for name, part in halves.items():
        write_safetensors({k: hub[k] for k in part}, tmp_path / "hf" / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf.vit_config(state)))
    model, _ = load_backbone(tmp_path / "hf")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
