"""MoCo v3: Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.

A query encoder (ViT backbone, projector, predictor) and a key encoder (backbone and projector) that is its
exponential moving average. Each view's query is contrasted with the other view's key among the keys of the batch
(no queue: the batch is large enough), with the symmetrised InfoNCE of the official code,

    loss = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = 2 tau * CE(q k^T / tau, diagonal)   (q, k l2-normalised)

computed by the fused ``info_nce`` op (the keys receive no gradient; the (N, N) logit matrix is never built). In
a multi-process run the keys of every rank are the candidates (the official concat_all_gather). The momentum
follows m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2 from m0 = 0.99 to 1. As the paper prescribes for ViT stability
(its "random patch projection"), the patch embedding keeps its random initialisation (``freeze_patch_embed``).

Heads (the official code's ``_build_mlp``): projector 3 layers (ViT) of 4096 to 256, predictor 2 layers of 4096
to 256, Linear layers without bias, BN + ReLU after each hidden layer and a BN without affine parameters on the
output.

Defaults (the paper's ViT recipe): ViT-Small (patch 16; patch 8 for images of 64 px or less, and at width 0.25
on CPU), AdamW lr 1.5e-4 x batch / 256, weight decay 0.1, warm-up then cosine decay, batch 4096, temperature
0.2, m0 0.99; BYOL's augmentation. (fastssl's AdamW has betas (0.9, 0.95), the official code torch's default
(0.9, 0.999).) (Its ResNet-50 recipe instead uses LARS, temperature 1.0 and a 2-layer
projector: pass ``--backbone resnet50 --optimizer lars --method-arg temperature=1.0 --method-arg proj_layers=2``.)

Small recipe (images of 64 px or less): the ViT cuts 8 x 8 patches (16 tokens for CIFAR-10, not the 64 of
patch 4), the heads are 1024 wide, and AdamW's lr is 1e-3. A CPU budget is then about a hundred steps instead
of a few dozen. Measured on the 2-core CPU (5-minute budget, ViT-Small at width 0.25, kNN on 10,000 / 2,000
CIFAR-10 images), 2026-12-07: this recipe 0.3390 against its random init 0.2845 (197 steps); the paper's recipe
(patch 4, 4096-wide heads, lr 1.5e-4) 0.3140 against its random init 0.3125 (46 steps). One-thread pilots: patch
4 with this lr and these heads 0.2870 (32 steps), patch 8 with them 0.3155 (120 steps).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fastssl import _dispatch
from fastssl.methods.base import Method
from fastssl.models import VisionTransformer
from fastssl.nn.gather import distributed_world, gather_with_grad, mean_over_ranks
from fastssl.ops import info_nce
from fastssl.ops.info_nce import _scale_tensor, info_nce_core
from fastssl.train.optim import ema_update


def moco_v3_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP head, (batch_size, in_dim) -> (batch_size, out_dim): ``num_layers`` bias-free Linear
    layers, BN + ReLU after the hidden ones, and (``last_bn``) a BN without affine parameters on the output."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(Method):
    name = "moco_v3"
    preset = "byol"
    default_backbone = "vit_small"
    defaults = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1}
    options = {"temperature": 0.2, "momentum_base": 0.99, "proj_layers": 3, "proj_hidden_dim": 4096,
               "proj_dim": 256, "pred_hidden_dim": 4096, "freeze_patch_embed": True}
    small_defaults = {"lr": 1e-3}
    small_options = {"proj_hidden_dim": 1024, "pred_hidden_dim": 1024}
    small_backbone_args = {"patch_size": 8}

    def __init__(self, backbone, backbone_spec, temperature: float, momentum_base: float, proj_layers: int,
                 proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int, freeze_patch_embed: bool, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        if not 0 <= momentum_base <= 1:
            raise ValueError(f"momentum_base: expected a value in [0, 1], got {momentum_base!r}")
        for key, value in (("proj_layers", proj_layers), ("proj_hidden_dim", proj_hidden_dim),
                           ("proj_dim", proj_dim), ("pred_hidden_dim", pred_hidden_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        if freeze_patch_embed and isinstance(backbone, VisionTransformer):
            backbone.patch_embed.requires_grad_(False)
        self.projector = moco_v3_mlp(proj_layers, backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = moco_v3_mlp(2, proj_dim, pred_hidden_dim, proj_dim)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.temperature = float(temperature)
        self.momentum_base = float(momentum_base)
        self.momentum = self.momentum_base

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> (queries, keys), each 2 x (batch_size, proj_dim). Each view goes
        through the encoders on its own, as in the official code (the heads' BN statistics are per view)."""
        queries = tuple(self.predictor(self.projector(self.backbone(view))) for view in views[:2])
        with torch.no_grad():
            keys = tuple(self.key_projector(self.key_backbone(view)) for view in views[:2])
        return queries, keys

    def _contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """2 tau * InfoNCE of the queries (n, d) against the keys of the (global) batch; key i is query i's."""
        rank, world = distributed_world()
        if not self.distributed or world == 1:
            return 2 * self.temperature * info_nce(q, k, self.temperature, backend=self.loss_backend)
        backend = _dispatch.select("info_nce", self.loss_backend, q.device, q.dtype, q.shape[1])
        n = q.shape[0]
        keys = gather_with_grad(k.contiguous(), "keys")  # (world * n, d); keys need no gradient
        positives = rank * n + torch.arange(n, device=q.device)
        no_exclusion = torch.full((n,), -1, dtype=torch.int64, device=q.device)
        loss = info_nce_core(q, keys, _scale_tensor(1.0 / self.temperature, q), positives, no_exclusion, True,
                             backend)
        return 2 * self.temperature * (loss + (mean_over_ranks(loss) - loss.detach()))

    def loss(self, outputs):
        (q0, q1), (k0, k1) = outputs
        return self._contrastive(q0.float(), k1.float()) + self._contrastive(q1.float(), k0.float())

    def after_step(self, step: int, horizon: int) -> None:
        self.momentum = 1 - (1 - self.momentum_base) * (math.cos(math.pi * min(step, horizon) / horizon) + 1) / 2
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        target = list(self.key_backbone.parameters()) + list(self.key_projector.parameters())
        ema_update(target, online, self.momentum)

    def logs(self):
        return {"ema_momentum": self.momentum}
