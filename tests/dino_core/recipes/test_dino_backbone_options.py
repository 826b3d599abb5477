"""Every recipe builds its backbone with the model section's options (DINO's recipe too)."""
from dino_core.config import ModelConfig
from dino_core.models import ARCHS
from dino_core.recipes.dino import build_models


def test_dino_recipe_builds_the_configured_backbone(monkeypatch):
    monkeypatch.setitem(ARCHS, "vit_micro", dict(embed_dim=32, depth=2, num_heads=2))
    m = ModelConfig(arch="vit_micro", patch_size=14, img_size=518, out_dim=16,
                    head_hidden_dim=16, head_bottleneck_dim=8, layerscale=1e-5,
                    register_tokens=4, drop_path_uniform=True, interpolate_offset=0.0,
                    interpolate_antialias=True)
    student, teacher = build_models(m)
    for net in (student.backbone, teacher.backbone):
        sd = net.state_dict()
        assert sd["pos_embed"].shape == (1, 37 * 37 + 1, 32)
        assert sd["register_tokens"].shape == (1, 4, 32) and "blocks.1.ls2.gamma" in sd
        assert (net.interpolate_offset, net.interpolate_antialias) == (0.0, True)
    assert {b.drop_path.p for b in student.backbone.blocks} == {0.1}      # uniform
    assert {b.drop_path.p for b in teacher.backbone.blocks} == {0.0}
    wide, _ = build_models(m, img_size=224)  # the explicit grid wins
    assert wide.backbone.pos_embed.shape == (1, 257, 32)
