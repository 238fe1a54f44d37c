"""MoCo v2: Chen, Fan, Girshick and He, "Improved Baselines with Momentum Contrastive Learning", 2020 (on MoCo:
He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020).

A query encoder (backbone + MLP head 2048-2048-128) and a key encoder that is its exponential moving average
(momentum 0.999); the loss is InfoNCE of each query against its key and a FIFO queue of 65,536 past keys
(temperature 0.2), computed by the fused ``info_nce`` op (the key gradient is skipped: keys need none).
MoCo's shuffling BN (keys computed on a shuffled batch split across GPUs, so BN cannot leak which key is the
positive) is emulated inside one process by running the key encoder on ``shuffle_bn_splits`` shuffled chunks.

Defaults (the paper's): SGD momentum 0.9, lr 0.03 x batch / 256, weight decay 1e-4, cosine schedule, queue 65,536,
temperature 0.2, EMA momentum 0.999.

Small recipe (images of 64 px or less, e.g. CIFAR-10; ``--method-arg`` and ``--lr`` override it): lr 0.06, EMA
momentum 0.99 and a queue of 4,096 keys. A CPU budget is a few hundred steps: at 0.999 the key encoder has
moved a fifth of the way from its random initialisation after 200 steps, and a 65,536-key queue holds keys from
256 steps back. Measured on the 2-core CPU (5-minute budget, ResNet-18 at width 0.25, kNN on 10,000 / 2,000
CIFAR-10 images; random init 0.2935), 2026-12-07: this recipe 0.4110 (498 steps), the paper's 0.3370 (360 steps).
One-thread pilots: solo-learn's CIFAR recipe (lr 0.3, momentum 0.99, queue 32,768, 2048-256 head) 0.2510, this
recipe 0.3825 (286 steps).
"""

from __future__ import annotations

import copy

import torch

from fastssl.methods.base import Method
from fastssl.models import MoCoProjectionHead
from fastssl.nn import MoCoLoss
from fastssl.train.optim import ema_update


class MoCoV2(Method):
    name = "moco_v2"
    preset = "moco_v2"
    global_batchnorm = False  # MoCo shuffles BN instead of synchronising it
    defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4}
    options = {"temperature": 0.2, "queue_size": 65536, "momentum": 0.999, "proj_hidden_dim": None,
               "proj_dim": 128, "shuffle_bn_splits": 4}
    small_defaults = {"lr": 0.06}
    small_options = {"momentum": 0.99, "queue_size": 4096}

    def __init__(self, backbone, backbone_spec, temperature, queue_size, momentum, proj_hidden_dim, proj_dim,
                 shuffle_bn_splits, **base):
        super().__init__(backbone, backbone_spec, **base)
        features = backbone.num_features
        self.projector = MoCoProjectionHead(features, proj_hidden_dim or features, proj_dim)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = MoCoLoss(temperature, queue_size, proj_dim, gather_distributed=self.distributed,
                                  backend=self.loss_backend)
        self.momentum = momentum
        self.shuffle_bn_splits = shuffle_bn_splits

    def _online(self):
        return list(self.backbone.parameters()) + list(self.projector.parameters())

    def _target(self):
        return list(self.key_backbone.parameters()) + list(self.key_projector.parameters())

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        splits = max(1, min(self.shuffle_bn_splits, x.shape[0] // 2))
        perm = torch.randperm(x.shape[0], device=x.device)  # the global RNG: seeded, and restored on resume
        shuffled = torch.cat([self.key_projector(self.key_backbone(c)) for c in x[perm].chunk(splits)])
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled
        return keys

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> (queries, keys), each (batch_size, proj_dim)."""
        queries = self.projector(self.backbone(views[0]))
        return queries, self._keys(views[1])

    def loss(self, outputs):
        queries, keys = outputs
        return self.criterion(queries.float(), keys.float())

    def after_step(self, step: int, horizon: int) -> None:
        ema_update(self._target(), self._online(), self.momentum)

    def logs(self):
        return {"ema_momentum": self.momentum}
