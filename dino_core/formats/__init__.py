"""Weight files and the layouts of the tensors in them, for training and evaluation alike.

- ``files``: torch files of tensors and plain data (atomic writes, ``weights_only`` reads,
  one clear error per unusable file, strict state loading).
- ``registry``: backbone layouts (``BackboneFormat``: detect, to and from the canonical
  layout); ``dino``: the official DINO layout, its first entry; ``dinov2``: the official
  DINOv2 layout (LayerScale, registers, SwiGLU, chunked blocks), tried before DINO's;
  ``timm``: timm's (DINO's keys); ``hf``: Hugging Face ``ViTModel``'s, and its model
  directories; ``hf_dinov2``: Hugging Face ``Dinov2Model``'s (tried before ``hf``).
- ``safetensors_io``: safetensors files (the optional ``safetensors`` package).
- ``canonical``: the architecture from the shapes; ViT and DINO head built from tensors.
- ``checkpoints``: read any supported file or directory (``read_checkpoint``,
  ``load_backbone``), write a backbone in any layout (``export_backbone``).
"""
from .checkpoints import (ImportedCheckpoint, build_backbone, build_head, export_backbone,
                          load_backbone, read_checkpoint)
from .files import CheckpointError
from .registry import FORMATS, BackboneFormat, Canonical, detect_format, register_format

__all__ = ["FORMATS", "BackboneFormat", "Canonical", "CheckpointError", "ImportedCheckpoint",
           "build_backbone", "build_head", "detect_format", "export_backbone", "load_backbone",
           "read_checkpoint", "register_format"]
