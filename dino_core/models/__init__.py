"""Models: ViT backbones with official parameter names, the DINO head, the multi-crop wrapper."""
from .head import DINOHead, MultiCropWrapper, WeightNormLinear
from .vit import ARCHS, VisionTransformer, build_vit, vit_base, vit_large, vit_small, vit_tiny

__all__ = ["ARCHS", "DINOHead", "MultiCropWrapper", "VisionTransformer", "WeightNormLinear",
           "build_vit", "vit_base", "vit_large", "vit_small", "vit_tiny"]
