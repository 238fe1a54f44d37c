"""Barlow Twins: Zbontar, Jing, Misra, LeCun and Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021.

Both views go through the backbone and a projector (three Linear layers of 8192, BN + ReLU after the first two).
Each output dimension is standardised over the batch (BN without affine parameters) and the cross-correlation
matrix C = z_a^T z_b / N (dim x dim) is pushed to the identity:

    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

the invariance term makes the two views agree, the redundancy-reduction term decorrelates the dimensions. Nothing
is stopped or averaged: both branches are the same network and both receive gradients. In a multi-process run the
standardisation uses the global batch (global BN) and C sums over every rank's rows (``gather_with_grad``), as
the official code's all-reduce of C does.

Defaults (the paper's): projector 8192-8192-8192 after ResNet-50's 2048 features, i.e. 4 x the backbone's
feature width (``proj_hidden_dim=None``, ``proj_dim=None``; 512 for the CPU default ResNet-18 at width 0.25,
whose features are 128 wide); lambda 0.0051 (the paper writes 5e-3, its code uses 0.0051); LARS, weight decay
1.5e-6, warm-up then cosine decay, batch 2048; BYOL's augmentation. The paper's lr, 0.2 x batch / 256, is 1.6 at
its batch of 2048; fastssl reaches that value there but scales it with the square root of the batch (as SimCLR's
Appendix B.1 does for small batches), so batch 256 gets 1.6 / sqrt(8) = 0.57 instead of 0.2: in 2-minute CPU runs
(about 30 steps of 256) the paper's linear rule barely moves the LARS-scaled weights. The paper's separate lr for
biases and BN parameters (0.0048) is not replicated: they take the weights' lr without LARS adaptation.
"""

from __future__ import annotations

import torch
from torch import nn

from fastssl.methods.base import Method, expander_dims
from fastssl.models import BarlowTwinsProjectionHead
from fastssl.nn import gather_with_grad


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """C = z_a^T z_b / N for batch-standardised (batch_size, dim) embeddings: (dim, dim)."""
    return z_a.T @ z_b / z_a.shape[0]


def barlow_twins_loss(c: torch.Tensor, lambd: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 of a (dim, dim) cross-correlation matrix."""
    diagonal = torch.diagonal(c)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + lambd * off_diagonal


class BarlowTwins(Method):
    name = "barlow_twins"
    preset = "byol"
    defaults = {"optimizer": "lars", "lr": 0.2 * 8 ** 0.5, "lr_scaling": "sqrt", "weight_decay": 1.5e-6}
    options = {"lambd": 0.0051, "proj_hidden_dim": None, "proj_dim": None}

    def __init__(self, backbone, backbone_spec, lambd: float, proj_hidden_dim, proj_dim, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not lambd >= 0:
            raise ValueError(f"lambd: expected >= 0, got {lambd!r}")
        proj_hidden_dim, proj_dim = expander_dims(backbone.num_features, proj_hidden_dim, proj_dim)
        self.lambd = float(lambd)
        self.projector = BarlowTwinsProjectionHead(backbone.num_features, proj_hidden_dim, proj_dim)
        self.standardize = nn.BatchNorm1d(proj_dim, affine=False)  # the official code's self.bn

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> 2 x (batch_size, proj_dim) projections. Each view goes through
        the network on its own, as in the official code (BN statistics per view); :meth:`loss` standardises
        each over its batch (the official code's bn(z1), bn(z2))."""
        return tuple(self.projector(self.backbone(view)) for view in views[:2])

    def loss(self, outputs):
        z_a, z_b = outputs
        # float32 without autocast: C sums batch_size products per entry and the off-diagonal sum dim^2 squares.
        with torch.autocast(z_a.device.type, enabled=False):
            z_a, z_b = self.standardize(z_a.float()), self.standardize(z_b.float())
            if self.distributed:
                z_a, z_b = gather_with_grad(z_a, "z_a"), gather_with_grad(z_b, "z_b")
            return barlow_twins_loss(cross_correlation(z_a, z_b), self.lambd)
