"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.

An online network (backbone, projector 4096-256, predictor 4096-256) predicts the projection of the other view
made by a target network, the exponential moving average of the online backbone and projector. The loss is the
normalised mean squared error 2 - 2 cos(p, z'), symmetrised over the two views; the target receives no gradient.
The EMA momentum follows tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 from tau_base = 0.996 to 1.

Defaults (the paper's): LARS, lr = 0.2 x batch / 256, weight decay 1.5e-6, cosine schedule with warm-up; the
asymmetric BYOL views (blur 1.0 / 0.1, solarize 0 / 0.2).

Small recipe (images of 64 px or less; solo-learn's CIFAR recipe): LARS with LARC clipping and trust coefficient
0.02, lr 1.0, weight decay 1e-5, tau_base 0.99. Measured on the 2-core CPU (5-minute budget, ResNet-18 at width
0.25, kNN on 10,000 / 2,000 CIFAR-10 images; random init 0.2935), 2026-12-07: this recipe 0.3030 (171 steps), the
paper's 0.2820 (180 steps); one-thread pilots: this recipe 0.3245 (112 steps), at lr 2.0 0.2940. Within 5 CPU
minutes BYOL stays within a few points of its random initialisation either way. With a 20-minute budget (754
steps) this recipe reached 0.3100 kNN and a 0.3225 linear probe (random init 0.329): the loss falls to 0.11 within
150 steps and stays between 0.10 and 0.21, and the features barely move.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from fastssl.eval.features import effective_rank
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
    small_defaults = {"lr": 1.0, "weight_decay": 1e-5, "lars_eta": 0.02, "lars_clip": True}
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
        self._z_std = torch.zeros(())
        self._z_last: torch.Tensor | None = None  # the last batch's target projections, for z_erank

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
        with torch.no_grad():
            self._z_std = F.normalize(z0.float(), dim=-1).std(dim=0, correction=0).mean()
        self._z_last = z0.detach()
        return (byol_loss(p0.float(), z1.float()) + byol_loss(p1.float(), z0.float())) / 2

    def after_step(self, step: int, horizon: int) -> None:
        self.momentum = 1 - (1 - self.momentum_base) * (math.cos(math.pi * min(step, horizon) / horizon) + 1) / 2
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        target = list(self.target_backbone.parameters()) + list(self.target_projector.parameters())
        ema_update(target, online, self.momentum)

    def logs(self):
        return {"ema_momentum": self.momentum, "z_std": float(self._z_std),
                "z_erank": effective_rank(self._z_last) if self._z_last is not None else float("nan")}
