"""DINOv2's official layout: released backbones (with and without registers, SwiGLU, chunked
blocks) load, and their features equal an independent statement of DINOv2's forward; export
round-trips bit for bit; every layout problem is one clear error.

The state dicts are written here from DINOv2's description (facebookresearch/dinov2
``DinoVisionTransformer``, the hub files ``dinov2_vit*14[_reg4]_pretrain.pth``): no download.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from dino_core.formats import (FORMATS, CheckpointError, detect_format, export_backbone,
                               load_backbone, read_checkpoint)
from dino_core.formats.dinov2 import DINOV2
from dino_core.formats.files import save_checkpoint
from dino_core.models import ARCHS

DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 14, 37  # a micro ViT/14, the released 518 px grid
SWIGLU_HIDDEN = 88  # DINOv2's SwiGLU width for 4 x 32: int(2/3 of 128) = 85, up to a multiple of 8


@pytest.fixture(autouse=True)
def micro_arch(monkeypatch):
    """A 2-block ViT registered as an architecture, so the tests stay small."""
    monkeypatch.setitem(ARCHS, "vit_micro", dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))


def official_state(registers=0, swiglu=False, seed=0) -> dict[str, torch.Tensor]:
    """A DINOv2 backbone state dict: keys and shapes of the official layout, random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.02, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)

    sd = {"cls_token": r(1, 1, DIM), "pos_embed": r(1, GRID * GRID + 1, DIM),
          "mask_token": r(1, DIM), "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH),
          "patch_embed.proj.bias": r(DIM)}
    if registers:
        sd["register_tokens"] = r(1, registers, DIM, scale=1.0)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": r(DIM, scale=0.1, mean=1.0), b + "norm1.bias": r(DIM),
                   b + "attn.qkv.weight": r(3 * DIM, DIM, scale=0.1), b + "attn.qkv.bias": r(3 * DIM),
                   b + "attn.proj.weight": r(DIM, DIM, scale=0.1), b + "attn.proj.bias": r(DIM),
                   b + "ls1.gamma": r(DIM, scale=0.3), b + "ls2.gamma": r(DIM, scale=0.3),
                   b + "norm2.weight": r(DIM, scale=0.1, mean=1.0), b + "norm2.bias": r(DIM)})
        if swiglu:
            sd.update({b + "mlp.w12.weight": r(2 * SWIGLU_HIDDEN, DIM, scale=0.1),
                       b + "mlp.w12.bias": r(2 * SWIGLU_HIDDEN),
                       b + "mlp.w3.weight": r(DIM, SWIGLU_HIDDEN, scale=0.1), b + "mlp.w3.bias": r(DIM)})
        else:
            sd.update({b + "mlp.fc1.weight": r(4 * DIM, DIM, scale=0.1), b + "mlp.fc1.bias": r(4 * DIM),
                       b + "mlp.fc2.weight": r(DIM, 4 * DIM, scale=0.1), b + "mlp.fc2.bias": r(DIM)})
    sd.update({"norm.weight": r(DIM, scale=0.1, mean=1.0), "norm.bias": r(DIM)})
    return sd


def dinov2_forward(sd, x, offset, antialias):
    """DINOv2's ViT forward, restated from its description in plain torch (float64): patch
    conv; CLS prepended; position embeddings (resized as DINOv2 does: in float32, bicubic, by
    scale factors (g + offset) / s when offset > 0, else to the size, antialiased or not) added;
    registers inserted after CLS; pre-norm blocks x + g1 * attn(ln1(x)), x + g2 * ffn(ln2(x))
    (ffn: GELU MLP, or SwiGLU w3(silu(a) * b) with [a, b] = w12(x)); final LayerNorm
    (eps 1e-6). Returns (cls [B, D], registers [B, R, D], patches [B, N, D])."""
    sd = {k: v.double() for k, v in sd.items()}
    B, _, H, W = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    gh, gw = t.shape[-2:]
    t = torch.cat((sd["cls_token"].expand(B, 1, DIM), t.flatten(2).transpose(1, 2)), dim=1)
    pos = sd["pos_embed"]
    if gh * gw != GRID * GRID or H != W:
        grid = pos[:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2)
        how = (dict(scale_factor=((gh + offset) / GRID, (gw + offset) / GRID)) if offset
               else dict(size=(gh, gw)))
        grid = F.interpolate(grid.float(), mode="bicubic", antialias=antialias, **how).double()
        pos = torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, DIM)), dim=1)
    t = t + pos
    regs = sd.get("register_tokens")
    R = 0 if regs is None else regs.shape[1]
    if R:
        t = torch.cat((t[:, :1], regs.expand(B, R, DIM), t[:, 1:]), dim=1)
    n, hd = t.shape[1], DIM // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (DIM,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
            B, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / math.sqrt(hd)).softmax(dim=-1)
        h = F.linear((a @ v).transpose(1, 2).reshape(B, n, DIM), sd[b + "attn.proj.weight"],
                     sd[b + "attn.proj.bias"])
        t = t + sd[b + "ls1.gamma"] * h
        h = F.layer_norm(t, (DIM,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        if b + "mlp.w12.weight" in sd:
            gate, val = F.linear(h, sd[b + "mlp.w12.weight"], sd[b + "mlp.w12.bias"]).chunk(2, -1)
            h = F.linear(F.silu(gate) * val, sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
        else:
            h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                         sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        t = t + sd[b + "ls2.gamma"] * h
    t = F.layer_norm(t, (DIM,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return t[:, 0], t[:, 1:1 + R], t[:, 1 + R:]


def assert_features_equal_the_statement(model, sd, offset, antialias, sizes=((42, 42), (56, 28))):
    model = model.double()
    torch.manual_seed(1)
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            got = model.forward_tokens(x)
        cls, regs, patches = dinov2_forward(sd, x, offset, antialias)
        torch.testing.assert_close(got["cls"], cls, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(got["registers"], regs, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(got["patches"], patches, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, False), (0, True)])
def test_released_backbone_loads_and_features_equal_dinov2s_forward(tmp_path, registers, swiglu):
    sd = official_state(registers, swiglu)
    save_checkpoint(sd, tmp_path / "dinov2_vitt14_pretrain.pth")
    model, ck = load_backbone(tmp_path / "dinov2_vitt14_pretrain.pth")
    assert (ck.layout, ck.name, ck.kind) == ("dinov2", "vit_micro/14", "backbone")
    assert model.state_dict().keys() == sd.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    # the release's interpolation: registers -> size + antialias, else offset 0.1
    offset, aa = (0.0, True) if registers else (0.1, False)
    assert (model.interpolate_offset, model.interpolate_antialias) == (offset, aa)
    assert_features_equal_the_statement(model, sd, offset, aa)


def test_chunked_blocks_and_training_parts_are_read(tmp_path):
    """DINOv2's training state: blocks.C.N.* (2 chunks of 1), backbone./dino_head./ibot_head.
    parts under a teacher entry; every tensor is placed."""
    sd = official_state(registers=4, seed=3)
    chunked = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i}.{i}." + k.split(".", 2)[2]
        chunked["backbone." + k] = v
    head = {"mlp.0.weight": torch.randn(16, DIM), "mlp.0.bias": torch.zeros(16),
            "last_layer.weight_g": torch.ones(8, 1), "last_layer.weight_v": torch.randn(8, 16)}
    ibot = {"mlp.0.weight": torch.randn(16, DIM), "mlp.0.bias": torch.zeros(16)}
    state = {**chunked, **{"dino_head." + k: v for k, v in head.items()},
             **{"ibot_head." + k: v for k, v in ibot.items()}}
    assert detect_format(state, "t.pth") is DINOV2
    canonical = DINOV2.to_canonical(state, "t.pth")
    assert canonical.backbone.keys() == sd.keys()
    assert all(torch.equal(canonical.backbone[k], v) for k, v in sd.items())
    assert canonical.head.keys() == head.keys() and canonical.extra["ibot_head"].keys() == ibot.keys()
    save_checkpoint({"teacher": state}, tmp_path / "teacher_checkpoint.pth")
    ck = read_checkpoint(tmp_path / "teacher_checkpoint.pth")
    assert (ck.kind, ck.layout, ck.name) == ("official", "dinov2", "vit_micro/14")
    assert ck.backbone.keys() == sd.keys() and ck.head.keys() == head.keys()


def test_dino_states_stay_dino_and_dinov2_is_tried_first():
    dino = {k: v for k, v in official_state().items()
            if ".ls" not in k and k != "mask_token"}
    assert detect_format(dino, "d.pth").name == "dino"
    assert detect_format(official_state(), "v2.pth") is DINOV2
    assert next(iter(FORMATS)) == "dino"  # registration order kept; detection tries v2 first


def project_checkpoint(backbone, model_cfg):
    return {"teacher": {"backbone." + k: v for k, v in backbone.items()},
            "student": {"module.backbone." + k: v for k, v in backbone.items()},
            "optimizer": {}, "epoch": 1,
            "config": {"model": {"arch": "vit_micro", "patch_size": PATCH, **model_cfg}}}


def test_export_writes_the_official_layout_and_reloads_bit_identically(tmp_path):
    sd = official_state(registers=4, seed=5)
    save_checkpoint(project_checkpoint(sd, {"interpolate_offset": 0.0,
                                            "interpolate_antialias": True}),
                    tmp_path / "checkpoint.pth")
    ck = export_backbone(tmp_path / "checkpoint.pth", tmp_path / "export.pth")  # auto
    written = torch.load(tmp_path / "export.pth", weights_only=True)
    assert written.keys() == sd.keys()  # the hub file's keys, nothing more
    assert all(torch.equal(written[k], v) for k, v in sd.items())
    model, again = load_backbone(tmp_path / "export.pth")
    assert again.layout == "dinov2" and again.interpolation == ck.interpolation
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_a_dino_backbone_exported_as_dinov2_gets_a_mask_token_and_unit_gammas(tmp_path):
    """The hub's DinoVisionTransformer always has both; x * 1.0 is exact, so the features
    of the reloaded model are bit-identical."""
    sd = {k: v for k, v in official_state(seed=6).items() if ".ls" not in k and k != "mask_token"}
    save_checkpoint(project_checkpoint(sd, {}), tmp_path / "checkpoint.pth")
    export_backbone(tmp_path / "checkpoint.pth", tmp_path / "dino.pth")  # auto: dino
    assert torch.load(tmp_path / "dino.pth", weights_only=True).keys() == sd.keys()
    export_backbone(tmp_path / "checkpoint.pth", tmp_path / "v2.pth", layout="dinov2")
    written = torch.load(tmp_path / "v2.pth", weights_only=True)
    assert torch.equal(written["mask_token"], torch.zeros(1, DIM))
    assert all(torch.equal(written[f"blocks.{i}.ls2.gamma"], torch.ones(DIM)) for i in range(DEPTH))
    dino_model, _ = load_backbone(tmp_path / "dino.pth")
    v2_model, _ = load_backbone(tmp_path / "v2.pth")
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        assert torch.equal(dino_model.forward_features(x), v2_model.forward_features(x))


def _chunk(sd, chunk_of):
    return {(f"blocks.{chunk_of(int(k.split('.')[1]))}." + k[len("blocks."):]
             if k.startswith("blocks.") else k): v for k, v in sd.items()}


@pytest.mark.parametrize("case,match", [
    ("twice", "block 0 appears in chunks 0 and 1"),
    ("mixed", "mixes chunked"),
    ("order", "not in block order"),
    ("not_a_tensor", "is a str, not a tensor"),
    ("stray_key", "does not match a VisionTransformer"),
    ("wrong_shape", "does not match a VisionTransformer"),
])
def test_layout_problems_are_one_clear_error(tmp_path, case, match):
    sd = official_state(seed=7)
    if case == "twice":
        sd = _chunk(sd, lambda i: i)
        sd["blocks.1.0.norm1.weight"] = sd["blocks.0.0.norm1.weight"]
    elif case == "mixed":
        sd = _chunk(sd, lambda i: i)
        sd["blocks.0.norm1.weight"] = sd.pop("blocks.0.0.norm1.weight")
    elif case == "order":
        sd = _chunk(sd, lambda i: 1 - i)
    elif case == "not_a_tensor":
        sd["note"] = "hello"
    elif case == "stray_key":
        sd["blocks.0.attn.q_norm.weight"] = torch.ones(DIM)
    elif case == "wrong_shape":
        sd["register_tokens"] = torch.zeros(1, 4, DIM + 1)
    save_checkpoint(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=match) as e:
        load_backbone(tmp_path / "bad.pth")
    assert "bad.pth" in str(e.value) and "\n" not in str(e.value)


def test_dino_export_format_option(tmp_path):
    from dino_core.cli.export import main
    sd = {k: v for k, v in official_state(seed=8).items() if ".ls" not in k and k != "mask_token"}
    save_checkpoint(project_checkpoint(sd, {}), tmp_path / "checkpoint.pth")
    assert main(["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output",
                 str(tmp_path / "out.pth"), "--format", "dinov2"]) == 0
    assert "mask_token" in torch.load(tmp_path / "out.pth", weights_only=True)
