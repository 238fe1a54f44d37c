"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.

An online network (backbone, projector 4096-256, predictor 4096-256) predicts the projection of the other view
made by a target network, the exponential moving average of the online backbone and projector. The loss is the
normalised mean squared error 2 - 2 cos(p, z'), symmetrised over the two views; the target receives no gradient.
The EMA momentum follows tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 from tau_base = 0.996 to 1.

Defaults (the paper's): LARS, lr = 0.2 x batch / 256, weight decay 1.5e-6, cosine schedule with warm-up; the
asymmetric BYOL views (blur 1.0 / 0.1, solarize 0 / 0.2).

The paper's Appendix F.2 multiplies the predictor's lr (``pred_lr_scale``, default 1). ``logs()`` adds ``z_std``
and ``z_erank``, the effective rank of the batch's target projections: the loss alone does not show a collapse.

Small recipe (images of 64 px or less): solo-learn's CIFAR optimizer (LARS with LARC clipping, trust coefficient
0.02, weight decay 1e-5, tau_base 0.99) at lr 0.1 instead of its 1.0. solo-learn warms lr 1.0 up over 10 epochs
(about 1,950 steps at batch 256), longer than a whole 20-minute CPU run; with fastssl's warm-up (5% of the run)
lr 1.0 collapses the representation to a line between steps 80 and 110 (backbone effective rank 1.5 of 128 at
step 150, kNN 0.2020), lr 0.3 nearly so (13.6), lr 0.1 not (87.9, kNN 0.3415); a 40x weight decay or a 10x
predictor lr does not prevent it (benchmarks/results/cpu-2core-amd-epyc/budget20_2026-12-07/byol_pilots/).
Measured on the 2-core CPU (ResNet-18 at width 0.25, kNN and linear probe on 10,000 / 2,000 CIFAR-10 images),
2026-12-07, 20-minute budget: lr 0.1 729 steps, kNN 0.3725 and linear probe 0.381 against the random init's 0.2935
and 0.329; seed 1 765 steps, 0.3470 and 0.3835 against 0.2595 and 0.3315. lr 1.0 (the recipe before): 754 steps,
0.3100 and 0.3225; with tau_base 0.996 0.2950 and 0.342. 5-minute budget (seed 0): lr 0.1 0.2835 and 0.306 (190
steps), lr 1.0 0.3030 (171 steps), the paper's recipe 0.2820 (180 steps): 5 CPU minutes are too few for BYOL.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from fastssl.eval.features import projection_spread
from fastssl.methods.base import Method
from fastssl.models import BYOLPredictionHead, BYOLProjectionHead
from fastssl.train.optim import ema_update


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z) averaged over the batch; z is the (detached) target projection."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


class BYOL(Method):
    name = "byol"
    preset = "byol"
    defaults = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6}
    options = {"proj_hidden_dim": 4096, "proj_dim": 256, "pred_hidden_dim": 4096, "momentum_base": 0.996,
               "pred_lr_scale": 1.0}
    small_defaults = {"lr": 0.1, "weight_decay": 1e-5, "lars_eta": 0.02, "lars_clip": True}
    small_options = {"momentum_base": 0.99}

    def __init__(self, backbone, backbone_spec, proj_hidden_dim, proj_dim, pred_hidden_dim, momentum_base,
                 pred_lr_scale: float = 1.0, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not (isinstance(pred_lr_scale, (int, float)) and math.isfinite(pred_lr_scale) and pred_lr_scale > 0):
            raise ValueError(f"pred_lr_scale: expected a finite number > 0, got {pred_lr_scale!r}")
        self.pred_lr_scale = float(pred_lr_scale)
        self.projector = BYOLProjectionHead(backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = BYOLPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum_base = momentum_base
        self.momentum = momentum_base
        self._z_last: torch.Tensor | None = None  # the last batch's target projections, for logs()

    def lr_scaled_modules(self):
        return [(self.predictor, self.pred_lr_scale)] if self.pred_lr_scale != 1.0 else []

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> (predictions, target projections), each 2 x (batch_size, proj_dim)."""
        x = torch.cat(views[:2])
        p = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z = self.target_projector(self.target_backbone(x)).chunk(2)
        return p, z

    def loss(self, outputs):
        (p0, p1), (z0, z1) = outputs
        self._z_last = z0.detach()
        return (byol_loss(p0.float(), z1.float()) + byol_loss(p1.float(), z0.float())) / 2

    def after_step(self, step: int, horizon: int) -> None:
        self.momentum = 1 - (1 - self.momentum_base) * (math.cos(math.pi * min(step, horizon) / horizon) + 1) / 2
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        target = list(self.target_backbone.parameters()) + list(self.target_projector.parameters())
        ema_update(target, online, self.momentum)

    def logs(self):
        return {"ema_momentum": self.momentum, **projection_spread(self._z_last)}
