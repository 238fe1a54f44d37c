"""SimSiam: Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021.

Both views go through one encoder f (backbone + projector: three Linear layers of 2048, BN after each, ReLU
after the first two) and a predictor h (a 2048-512-2048 bottleneck MLP). The loss is the symmetrised negative
cosine similarity D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D(p, z) = -cos(p, z): there is no momentum
encoder and no negative pair; the stop-gradient on z is what prevents collapse (the paper's Section 4.1 and
Figure 2: without it the output collapses to a constant, the std of the l2-normalised z falls to 0, which
``logs()`` reports as ``z_std``; 1 / sqrt(proj_dim) when the outputs spread evenly).

Defaults (the paper's ImageNet recipe, Section 3): SGD momentum 0.9, lr 0.05 x batch / 256, weight decay 1e-4,
cosine decay, batch 512; MoCo v2's augmentation (the "cifar" views for images of 64 px or less). As in the paper
(Section 4.3, "fix_lr" in its code), the predictor's lr stays at the base lr while the rest follows the warm-up
and cosine schedule; ``fix_pred_lr=False`` schedules it too.

Small recipe (images of 64 px or less): SGD lr 1.0, weight decay 1e-5 (solo-learn's CIFAR recipe has lr 0.5).
Measured on the 2-core CPU (5-minute budget, ResNet-18 at width 0.25, kNN on 10,000 / 2,000 CIFAR-10 images;
random init 0.2935), 2026-12-07: this recipe 0.3065 (259 steps), the paper's 0.2500 (278 steps); one-thread
pilots: lr 0.5 0.2980 (174 steps), lr 1.0 0.3190 (156 steps), lr 2.0 0.2810 (153 steps); all of these before
the predictor's lr was fixed. With it and a 20-minute budget (1,068 steps): 0.3240 kNN, 0.368 linear probe
(random init 0.329); with seed 1 (1,046 steps) 0.3705 kNN, 0.41 linear probe (its random init 0.2595, 0.3315).
At lr 0.5, 20 minutes: seed 0 (1,028 steps) 0.3390 kNN, 0.3965 linear probe; seed 1 (1,051 steps) 0.3575 kNN,
0.361 linear probe. Better than lr 1.0 on one seed, worse on the other, level on the two-seed means (kNN +7.2 and
+7.1 points over random init, linear probe 0.379 and 0.389), so lr 1.0 stays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.eval.features import projection_spread
from fastssl.methods.base import Method
from fastssl.models import SimSiamPredictionHead, SimSiamProjectionHead


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z) averaged over the batch; (batch_size, dim) each. z is detached (the stop-gradient)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


class SimSiam(Method):
    name = "simsiam"
    preset = "moco_v2"
    defaults = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4}
    options = {"proj_hidden_dim": 2048, "proj_dim": 2048, "pred_hidden_dim": 512, "fix_pred_lr": True}
    small_defaults = {"lr": 1.0, "weight_decay": 1e-5}

    def __init__(self, backbone, backbone_spec, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int,
                 fix_pred_lr: bool, **base):
        super().__init__(backbone, backbone_spec, **base)
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim),
                           ("pred_hidden_dim", pred_hidden_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        self.projector = SimSiamProjectionHead(backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = SimSiamPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.fix_pred_lr = bool(fix_pred_lr)
        self._z_last: torch.Tensor | None = None  # the last batch's target projections, for logs()

    def fixed_lr_modules(self):
        return [self.predictor] if self.fix_pred_lr else []

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> (predictions p, detached projections z), each 2 x (batch_size,
        proj_dim). Each view goes through the encoder on its own, as in the official code (BN statistics per
        view)."""
        z = [self.projector(self.backbone(view)) for view in views[:2]]
        p = [self.predictor(zi) for zi in z]
        return tuple(p), tuple(zi.detach() for zi in z)

    def loss(self, outputs):
        (p0, p1), (z0, z1) = outputs
        self._z_last = z0.detach()
        return (negative_cosine(p0.float(), z1.float()) + negative_cosine(p1.float(), z0.float())) / 2

    def logs(self):
        return projection_spread(self._z_last)
