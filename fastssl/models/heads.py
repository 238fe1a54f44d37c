"""Projection and prediction heads, layer for layer as the papers (and their official code) define them.

Every head maps (batch_size, in_dim) -> (batch_size, out_dim); defaults are the papers' ImageNet sizes with a
ResNet-50 backbone (in_dim 2048). Pass ``in_dim=backbone.num_features`` and smaller hidden sizes for small
runs. Heads with BatchNorm need batch_size >= 2 in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class SimCLRProjectionHead(nn.Sequential):
    """SimCLR projector g(.) (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations"): Linear - BN - ReLU - Linear, 2048 -> 2048 -> 128. The paper writes g(h) = W2 ReLU(W1
    h); the hidden layer is batch-normalised here, as in lightly's SimCLRProjectionHead."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class MoCoProjectionHead(nn.Sequential):
    """MoCo v2 MLP head (Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning"):
    Linear - ReLU - Linear, 2048 -> 2048 -> 128, no BN (MoCo's shuffling BN lives in the encoder)."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BYOLProjectionHead(nn.Sequential):
    """BYOL projector (Grill et al., 2020, "Bootstrap Your Own Latent"): Linear - BN - ReLU - Linear,
    2048 -> 4096 -> 256."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BYOLPredictionHead(BYOLProjectionHead):
    """BYOL predictor q (Grill et al., 2020): the projector's architecture, 256 -> 4096 -> 256."""

    def __init__(self, in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(in_dim, hidden_dim, out_dim)


class SimSiamProjectionHead(nn.Sequential):
    """SimSiam projector (Chen & He, 2021, "Exploring Simple Siamese Representation Learning"): three
    Linear layers of 2048 with BN after each, ReLU after the first two; the last BN has no affine parameters
    (the official code's ``BatchNorm1d(dim, affine=False)``). Linear layers followed by BN have no bias."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim, affine=False),
        )


class SimSiamPredictionHead(nn.Sequential):
    """SimSiam predictor h (Chen & He, 2021): a bottleneck Linear - BN - ReLU - Linear, 2048 -> 512 -> 2048,
    with no BN on the output."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 512, out_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BarlowTwinsProjectionHead(nn.Sequential):
    """Barlow Twins projector (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction"): three Linear layers of 8192, BN + ReLU after the first two; no biases (official
    code). The loss batch-normalises the output itself."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 8192, out_dim: int = 8192):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class VICRegProjectionHead(nn.Sequential):
    """VICReg expander (Bardes et al., 2022, "VICReg: Variance-Invariance-Covariance Regularization"):
    three Linear layers of 8192, BN + ReLU after the first two, the last without bias (official code)."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 8192, out_dim: int = 8192):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class DINOHead(nn.Module):
    """DINO head (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers"): a 3-layer
    MLP (hidden 2048, GELU) to a 256-d bottleneck, L2 normalisation, then a weight-normalised Linear without
    bias to K = 65536 prototypes.

    The last layer's weight is ``scale * v / ||v||`` row-wise (``nn.utils.weight_norm`` with dim 0, written
    out so that it compiles and shards like any Linear). With ``norm_last_layer=True`` (DINO's default for
    ViT) the scale is fixed at 1, which the paper finds stabilises training. ``use_bn`` adds BN after the
    hidden layers (DINO's ResNet-50 setting). ``in_dim`` defaults to ViT-S's 384.
    """

    def __init__(self, in_dim: int = 384, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3, use_bn: bool = False,
                 norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(d_in, d_out))
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.GELU())
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer_direction = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_layer_direction, std=0.02)
        self.last_layer_scale = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        weight = self.last_layer_scale * F.normalize(self.last_layer_direction, dim=1)
        return F.linear(x, weight)
