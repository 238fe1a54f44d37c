"""Backbones (ResNet, ViT, a small text Transformer) and the SSL methods' projection / prediction heads."""

from fastssl.models.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
    VICRegProjectionHead,
)
from fastssl.models.resnet import ResNet, resnet18, resnet50
from fastssl.models.transformer import TextTransformer
from fastssl.models.vit import VisionTransformer, patchify, sincos_pos_embed_2d, vit_small, vit_tiny

# Image backbones by name; each maps (B, C, H, W) images to (B, num_features) features.
BACKBONES = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
}


__all__ = [
    "BACKBONES", "BYOLPredictionHead", "BYOLProjectionHead", "BarlowTwinsProjectionHead", "DINOHead",
    "MoCoProjectionHead", "ResNet", "SimCLRProjectionHead", "SimSiamPredictionHead", "SimSiamProjectionHead",
    "TextTransformer", "VICRegProjectionHead", "VisionTransformer", "build_backbone", "patchify", "resnet18",
    "resnet50", "sincos_pos_embed_2d", "vit_small", "vit_tiny",
]


def build_backbone(name: str, **kwargs):
    """``BACKBONES[name](**kwargs)``, e.g. ``build_backbone("resnet18", cifar_stem=True)`` or
    ``build_backbone("vit_tiny", img_size=32, patch_size=4)``. Raises ValueError listing the names."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r}: expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)
