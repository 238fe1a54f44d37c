"""SimCLR: Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020.

Two views of each image go through the backbone f and the projector g (Linear-BN-ReLU-Linear to 128 d); the loss
is NT-Xent over the 2N projections: each view's positive is its twin, the other 2N - 2 views are negatives.
fastssl computes it with the fused ``nt_xent`` op (the 2N x 2N similarity matrix is never built) and, in a
multi-process run, against the negatives of every rank (``gather_distributed``), with BatchNorm over the global
batch, as the paper's global BN prescribes.

Defaults (the paper's): LARS with square-root lr scaling, lr = 0.075 x sqrt(batch) = 1.2 x sqrt(batch / 256)
(Appendix B.1: better than linear scaling for small batches and short runs; the linear rule 0.3 x batch / 256 is
for batch 4096), weight decay 1e-6, warm-up then cosine decay; temperature 0.5 (its CIFAR-10 setting, Appendix
B.9; ImageNet uses 0.1 at batch 4096); projection 128-d, hidden width = the backbone's feature width.
"""

from __future__ import annotations

import torch

from fastssl.methods.base import Method
from fastssl.models import SimCLRProjectionHead
from fastssl.nn import NTXentLoss


class SimCLR(Method):
    name = "simclr"
    preset = "simclr"
    defaults = {"optimizer": "lars", "lr": 1.2, "lr_scaling": "sqrt", "weight_decay": 1e-6}
    options = {"temperature": 0.5, "proj_hidden_dim": None, "proj_dim": 128}

    def __init__(self, backbone, backbone_spec, temperature: float, proj_hidden_dim, proj_dim: int, **base):
        super().__init__(backbone, backbone_spec, **base)
        features = backbone.num_features
        self.projector = SimCLRProjectionHead(features, proj_hidden_dim or features, proj_dim)
        self.criterion = NTXentLoss(temperature, gather_distributed=self.distributed, backend=self.loss_backend)

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> 2 x (batch_size, proj_dim). Both views share one backbone pass
        (the paper concatenates them too, so BN sees the 2N views together)."""
        z = self.projector(self.backbone(torch.cat(views[:2])))
        return z.chunk(2)

    def loss(self, outputs):
        z0, z1 = outputs
        return self.criterion(z0.float(), z1.float())
