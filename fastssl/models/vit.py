"""Vision Transformer (Dosovitskiy et al., 2021) as MAE (He et al., 2022) and MoCo v3 (Chen et al., 2021)
pretrain it: a Linear patch embedding, a cls token, a fixed 2-D sin-cos position embedding, pre-LN blocks.

The patch embedding is ``nn.Linear(p * p * C, dim)`` over patch vectors in MAE's patchify order (see
:func:`patchify`), not a strided Conv2d. The two compute the same map, but the Linear form lets MAE's encoder
take patches that the fused masking op has already gathered ((B, K, p*p*C), the visible 25%), so the masked
75% is never embedded: :meth:`VisionTransformer.forward_patches`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.models.transformer import _init_transformer_weights, transformer_blocks

Tensor = torch.Tensor
Size = Union[int, tuple[int, int]]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, h * w, p * p * C) with h = H / p, w = W / p: patch ``i * w + j`` is the block at
    row i, column j, flattened as (p_row, p_col, C), exactly MAE's ``patchify``."""
    batch, channels, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"images: height and width must be multiples of patch_size={p}, got "
                         f"{height}x{width}")
    h, w = height // p, width // p
    x = images.reshape(batch, channels, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, h * w, p * p * channels)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, device=None) -> Tensor:
    """Fixed 2-D sin-cos position embedding, (grid_h * grid_w, dim) float32, in MAE's layout: the first dim /
    2 channels encode the column, the last dim / 2 the row, each as [sin(pos * omega), cos(pos * omega)] with
    omega_k = 10000 ** (-k / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for the 2-D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4))
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)

    def embed_1d(positions: Tensor) -> Tensor:
        angles = positions[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class VisionTransformer(nn.Module):
    """ViT encoder returning pooled features; ``num_features`` = ``dim``.

    Args:
        img_size: training image size (int or (H, W)); fixes the position table. :meth:`forward` also
            accepts other sizes (sin-cos: computed for the new grid; learned: bicubic-interpolated), e.g.
            DINO's 96-pixel local crops.
        patch_size: p; H and W must be multiples of it.
        in_channels: C of the input images.
        dim, depth, num_heads, mlp_ratio, qkv_bias: the Transformer's shape.
        pool: "cls" (the cls token, MoCo v3 / DINO) or "mean" (mean of the patch tokens, MAE's fine-tuning).
        pos_embed: "sincos" (fixed, MAE / MoCo v3; the cls token gets no position) or "learned" (DINO).
        drop_path_rate: stochastic depth of the last block (linear from 0), DINO uses 0.1 for ViT-S.

    Shapes: ``forward(images)``: (B, C, H, W) float -> (B, dim).
    ``forward_patches(patches, ids_keep)``: (B, K, p*p*C), int64 (B, K) -> all tokens (B, 1 + K, dim).
    """

    def __init__(self, img_size: Size = 224, patch_size: int = 16, in_channels: int = 3, dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 pool: str = "cls", pos_embed: str = "sincos", drop_path_rate: float = 0.0):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool: expected 'cls' or 'mean', got {pool!r}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed: expected 'sincos' or 'learned', got {pos_embed!r}")
        self.img_size = _pair(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size={patch_size}")
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_dim = patch_size * patch_size * in_channels
        self.num_features = dim
        self.pool = pool
        self.learned_pos = pos_embed == "learned"

        self.patch_embed = nn.Linear(self.patch_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if self.learned_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        else:
            # A buffer, not a parameter: fixed, recomputed from the config, so not saved in checkpoints.
            self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, *self.grid_size)[None],
                                 persistent=False)
            self.cls_pos_embed = None
        self.blocks = transformer_blocks(dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate)
        self.norm = nn.LayerNorm(dim)

        self.apply(_init_transformer_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.learned_pos:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_pos_embed, std=0.02)

    def _pos_embed_for(self, grid_h: int, grid_w: int) -> Tensor:
        """(1, grid_h * grid_w, dim): the position embedding of a grid_h x grid_w patch grid."""
        if (grid_h, grid_w) == self.grid_size:
            return self.pos_embed
        if not self.learned_pos:
            return sincos_pos_embed_2d(self.num_features, grid_h, grid_w, self.pos_embed.device)[None]
        table = self.pos_embed.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)

    def _encode(self, tokens: Tensor) -> Tensor:
        """Position-embedded patch tokens (B, K, dim) -> cls prepended, blocks, final norm: (B, 1+K, dim)."""
        cls = self.cls_token if self.cls_pos_embed is None else self.cls_token + self.cls_pos_embed
        x = torch.cat([cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_patches(self, patches: Tensor, ids_keep: Optional[Tensor] = None) -> Tensor:
        """Encode pre-gathered patch vectors: MAE's encoder on the visible patches.

        patches: (B, K, p*p*C) in :func:`patchify` layout. ids_keep: int64 (B, K), each patch's index in the
        training image's grid (0 .. num_patches - 1), which selects its position embedding; None means all
        num_patches patches in order. Returns every token after the final LayerNorm, cls first:
        (B, 1 + K, dim).
        """
        if patches.dim() != 3 or patches.shape[-1] != self.patch_dim:
            raise ValueError(f"patches: expected (B, K, {self.patch_dim}), got {tuple(patches.shape)}")
        x = self.patch_embed(patches)
        if ids_keep is None:
            if patches.shape[1] != self.num_patches:
                raise ValueError(f"patches: {patches.shape[1]} patches without ids_keep, expected all "
                                 f"{self.num_patches}")
            return self._encode(x + self.pos_embed)
        if ids_keep.shape != patches.shape[:2]:
            raise ValueError(f"ids_keep: expected {tuple(patches.shape[:2])}, got {tuple(ids_keep.shape)}")
        return self._encode(x + self.pos_embed[0][ids_keep])

    def forward_tokens(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> all tokens (B, 1 + h*w, dim) after the final LayerNorm."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images: expected (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        pos = self._pos_embed_for(images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
        return self._encode(self.patch_embed(patchify(images, self.patch_size)) + pos)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.forward_tokens(images)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


def _scaled_dim(dim: int, num_heads: int, width: float) -> int:
    """``dim * width`` rounded to a multiple of 4 * num_heads (the heads keep their number; each head's width
    stays a multiple of 4, as the 2-D sin-cos embedding needs), like ResNet's ``width``."""
    step = 4 * num_heads
    scaled = int(round(dim * width / step)) * step
    if scaled < step:
        raise ValueError(f"width: {width} leaves dim {dim} with fewer than {step} channels ({num_heads} heads)")
    return scaled


def vit_tiny(width: float = 1.0, **kwargs) -> VisionTransformer:
    """ViT-Tiny (DeiT): dim 192, 12 blocks, 3 heads, 5.5M parameters at 224 / 16 (no classifier). ``width``
    scales dim (0.25: dim 48), as the engine's CPU default does for every default backbone."""
    return VisionTransformer(**{"dim": _scaled_dim(192, 3, width), "depth": 12, "num_heads": 3, **kwargs})


def vit_small(width: float = 1.0, **kwargs) -> VisionTransformer:
    """ViT-Small (DeiT, DINO, MoCo v3): dim 384, 12 blocks, 6 heads, 21.6M parameters (no classifier).
    ``width`` scales dim (0.25: dim 96, 6 heads of 16)."""
    return VisionTransformer(**{"dim": _scaled_dim(384, 6, width), "depth": 12, "num_heads": 6, **kwargs})

