"""DINO: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski and Joulin, "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021.

Self-distillation without labels. A student (backbone + DINO head: a 3-layer MLP, an l2-normalised 256-d
bottleneck and a weight-normalised Linear to K prototypes) sees every crop of the multi-crop views (2 global +
L local, made by the augmentation op: one launch per crop size); a teacher, the exponential moving average of
the student, sees the 2 global crops only. The teacher's outputs are centred (minus a running mean, the centre,
an EMA of the teacher's batch means with momentum 0.9) and sharpened (temperature tau_t, warmed up linearly from
0.04 to 0.07); the student (temperature 0.1) matches them across crops:

    loss = mean over pairs (global teacher crop i, student crop v != i) of  -sum_k P_t,i(k) log P_s,v(k)

Centring keeps one prototype from taking over, sharpening keeps the output from going uniform. The teacher
receives no gradient; its momentum follows m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2 from m0 = 0.996 to 1.

Defaults (the paper's, Section 3 and Appendix; the official code): student temperature 0.1, teacher temperature
0.04 -> 0.07 over the first 30 epochs of 100 (``warmup_teacher_temp_fraction=0.3``: 30% of the run's steps),
centre momentum 0.9, m0 0.996, head hidden 2048, bottleneck 256, last layer weight-normalised with its scale
fixed at 1 (``norm_last_layer``); multi-crop 2 x 224 (scale 0.4-1) + 8 x 96 (scale 0.05-0.4), or 2 x 32 + 6 x 16
for images of 64 px or less (the ``dino_small`` views). Two departures, both for CPU budgets: K = 4096
prototypes (``out_dim``; the paper's ImageNet runs use 65536, solo-learn's CIFAR-10 setting is 4096), and a ResNet-18
backbone with the official README's ResNet-50 recipe (SGD, lr 0.03 x batch / 256, weight decay 1e-4; that recipe
also narrows the crop scales to 0.14-1 and 0.05-0.14: ``--view-arg global_scale=...``), since a ResNet learns
faster than a ViT in minutes of CPU time. The ViT-S/16 recipe is ``--backbone vit_small --optimizer adamw --lr 5e-4
--weight-decay 0.04`` (and 0.04 -> 0.4: ``weight_decay_end: 0.4`` in a config file). As in the official code the
last layer (the prototypes) takes no step during the first epoch of 100 (``freeze_last_layer_fraction=0.01`` of
the run's steps); its gradient clipping at 3.0 is the config's ``clip_grad: 3.0`` (off by default).

Small recipe (images of 64 px or less; solo-learn's CIFAR-10 optimizer): LARS with LARC clipping, trust
coefficient 0.02, lr 0.3, weight decay 1e-6; BN in the head's hidden layers (``use_bn_in_head``) and m0 0.99; no
frozen last layer (``freeze_last_layer_fraction=0``: the runs below were measured without it); and a sharper
teacher, tau_t = 0.02 throughout (``teacher_temp`` and ``warmup_teacher_temp``; the paper's 0.04 -> 0.07 is the
recipe before it). BN spreads the head's outputs over the batch, so the centred teacher is not flat from the
start. Measured on the 2-core CPU (5-minute budget, ResNet-18 at width 0.25, kNN on 10,000 / 2,000 CIFAR-10
images; random init 0.2935), 2026-12-07, with tau_t 0.04 -> 0.07: this recipe 0.3205 (106 steps), the ResNet-50
recipe above 0.2225 (120 steps). One-thread pilots:

    LARC recipe, m0 0.99, no local crops                     0.2360   (100 steps; the loss stays at log K)
    ... with BN in the head, no local crops                  0.3110   (99 steps)
    ... with BN in the head, multi-crop (this recipe)        0.3105   (63 steps)
    ... and K = 1024                                         0.3135   (67 steps)
    ... at lr 1.0 (K = 4096)                                 0.2975   (61 steps)
    ... with teacher temperature 0.04 throughout             0.3050   (53 steps)

With a 20-minute budget (443 steps) the recipe before (tau_t 0.04 -> 0.07) reached 0.3340 kNN and a 0.346 linear
probe (random init 0.329), its loss within 0.03 of log K throughout; with seed 1 (441 steps) 0.3170 kNN and a
0.355 linear probe against its own random init's 0.2595 and 0.3315.

Why the sharper teacher: ``teacher_entropy`` in metrics.csv (the paper's monitor, beside ``kl`` = loss - it)
showed the collapse that centring drives and sharpening is meant to stop: with tau_t 0.04 -> 0.07 the centred
teacher went uniform (entropy 7.53 at step 5, 8.24 of log K = 8.32 by step 100, the KL left 0.07), so the student
had nothing to match. Pilots of 100 steps, seed 0 (benchmarks/results/cpu-2core-amd-epyc/dino_pilots_2026-12-07/;
teacher entropy and KL at step 100):

    tau_t 0.04 -> 0.07 (the recipe before)       kNN 0.3105   entropy 8.24   KL 0.07
    ... centre momentum 0.99                          0.3135           8.20       0.06
    ... K = 256 prototypes                            0.2950           5.45 of 5.55   0.09
    ... learnable prototype norms                     0.3070           8.24       0.07
    tau_t 0.02 throughout (this recipe)               0.3305           6.89       0.88
    tau_t 0.01 throughout                             0.3085           4.76 (0.26 at step 40: one prototype)
    tau_t 0.02, student temperature 0.05              0.3030           4.24

5-minute budget (``method_results.py``), both seeds: tau_t 0.02 kNN 0.3400 (+4.65 over the random init, 105
steps) and 0.3275 (+6.8, 118 steps), linear probe 0.353 and 0.3645 (init 0.329 and 0.3315); the recipe before
0.2945 (+0.1) and 0.2980 (+3.85), linear probe 0.3175 and 0.3225, below the init. 20-minute budget: tau_t 0.02
kNN 0.3800 (+8.65, 440 steps) and 0.3535 (+9.4, 423 steps), linear probe 0.419 and 0.4135, the loss falling from
8.3 to 6.0 and 6.3 (teacher entropy 4.7 and 5.2, KL 1.1 to 1.2 at the end); the recipe before +4.1 and +5.8.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastssl.methods.base import Method
from fastssl.models import DINOHead
from fastssl.nn.gather import distributed_world
from fastssl.train.optim import ema_update


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float) -> torch.Tensor:
    """DINO's cross-entropy over crop pairs.

    student: (n_crops * batch_size, K) logits, the 2 global crops first; teacher: (2 * batch_size, K) logits of
    the global crops; center: (1, K). Each teacher crop i is the target of every student crop v != i.
    """
    batch = teacher.shape[0] // 2
    log_p = F.log_softmax(student / student_temp, dim=-1).split(batch)  # n_crops x (B, K)
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1).split(batch)  # 2 x (B, K)
    all_crops = torch.stack(log_p).sum(dim=0)  # sum over v of log P_s,v: (B, K)
    total = sum((-(t * (all_crops - log_p[i])).sum(dim=-1)).mean() for i, t in enumerate(targets))
    pairs = len(targets) * (len(log_p) - 1)
    return total / pairs


class DINO(Method):
    name = "dino"
    preset = "dino"
    small_preset = "dino_small"
    default_backbone = "resnet18"
    defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4}
    options = {"out_dim": 4096, "hidden_dim": 2048, "bottleneck_dim": 256, "use_bn_in_head": False,
               "norm_last_layer": True, "student_temp": 0.1, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
               "warmup_teacher_temp_fraction": 0.3, "center_momentum": 0.9, "momentum_base": 0.996,
               "freeze_last_layer_fraction": 0.01}
    small_defaults = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "lars_eta": 0.02, "lars_clip": True}
    small_options = {"use_bn_in_head": True, "momentum_base": 0.99, "freeze_last_layer_fraction": 0.0,
                     "teacher_temp": 0.02, "warmup_teacher_temp": 0.02}

    def __init__(self, backbone, backbone_spec, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 use_bn_in_head: bool, norm_last_layer: bool, student_temp: float, teacher_temp: float,
                 warmup_teacher_temp: float, warmup_teacher_temp_fraction: float, center_momentum: float,
                 momentum_base: float, freeze_last_layer_fraction: float = 0.0, **base):
        super().__init__(backbone, backbone_spec, **base)
        for key, value in (("out_dim", out_dim), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        for key, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                           ("warmup_teacher_temp", warmup_teacher_temp)):
            if not value > 0:
                raise ValueError(f"{key}: expected > 0, got {value!r}")
        for key, value in (("warmup_teacher_temp_fraction", warmup_teacher_temp_fraction),
                           ("center_momentum", center_momentum), ("momentum_base", momentum_base),
                           ("freeze_last_layer_fraction", freeze_last_layer_fraction)):
            if not 0 <= value <= 1:
                raise ValueError(f"{key}: expected a value in [0, 1], got {value!r}")
        self.head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim, use_bn=use_bn_in_head,
                             norm_last_layer=norm_last_layer)
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_teacher_temp_fraction = float(warmup_teacher_temp_fraction)
        self.center_momentum = float(center_momentum)
        self.momentum_base = float(momentum_base)
        self.momentum = self.momentum_base
        self.freeze_last_layer_fraction = float(freeze_last_layer_fraction)
        self._last_teacher_temp = self.warmup_teacher_temp
        self._last_batch: tuple | None = None  # (teacher logits, centre, tau_t, loss) of the last step, for logs()

    def teacher_temperature(self, step: int, horizon: int) -> float:
        """tau_t at ``step``: linear from warmup_teacher_temp to teacher_temp over the first
        warmup_teacher_temp_fraction of the run, then constant."""
        warmup = self.warmup_teacher_temp_fraction * horizon
        if step >= warmup:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / warmup

    def _student(self, views: list[torch.Tensor]) -> torch.Tensor:
        """One backbone pass per run of same-sized crops (the official MultiCropWrapper), one head pass."""
        features, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return self.head(torch.cat(features))

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 global (batch_size, C, H, W) then L local (batch_size, C, h, w) crops -> (student logits
        ((2 + L) * batch_size, out_dim), teacher logits (2 * batch_size, out_dim), teacher temperature)."""
        if len(views) < 2:
            raise ValueError(f"views: DINO needs 2 global crops (and local ones), got {len(views)} view(s)")
        student = self._student(views)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))
        return student, teacher, self.teacher_temperature(step, horizon)

    def loss(self, outputs):
        student, teacher, teacher_temp = outputs
        self._last_teacher_temp = teacher_temp
        # float32 without autocast: softmax over K prototypes at temperature 0.04.
        with torch.autocast(student.device.type, enabled=False):
            teacher = teacher.float()
            loss = dino_loss(student.float(), teacher, self.center, self.student_temp, teacher_temp)
        # For logs(), which computes the collapse monitors only on the steps it is called: no extra work or host
        # sync per step. The centre is copied before this step's update moves it.
        self._last_batch = (teacher, self.center.clone(), teacher_temp, loss.detach())
        self._update_center(teacher)
        return loss

    @torch.no_grad()
    def collapse_monitors(self) -> dict[str, float]:
        """The paper's two collapse monitors (Section 5.3, Figure 7) for the last batch: ``teacher_entropy``, the
        mean entropy of the centred, sharpened teacher outputs (log K when they go uniform, 0 when one prototype
        takes over), and ``kl`` = loss - teacher_entropy, what the student still has to close (0 in either
        collapse). Before the first batch: nan."""
        if self._last_batch is None:
            return {"teacher_entropy": float("nan"), "kl": float("nan")}
        teacher, center, teacher_temp, loss = self._last_batch
        p = F.softmax((teacher - center) / teacher_temp, dim=-1)
        entropy = float(-(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1).mean())
        return {"teacher_entropy": entropy, "kl": float(loss) - entropy}

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * the mean teacher output over the (global) batch."""
        batch_sum = teacher.sum(dim=0, keepdim=True)
        count = teacher.shape[0]
        _, world = distributed_world()
        if self.distributed and world > 1:
            dist.all_reduce(batch_sum)
            count *= world
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)

    def last_layer_frozen(self, step: int, horizon: int) -> bool:
        """Whether step ``step`` (0-based) falls in the first freeze_last_layer_fraction of the run."""
        return step < self.freeze_last_layer_fraction * horizon

    def before_optimizer_step(self, step: int, horizon: int) -> None:
        """The official code's ``cancel_gradients_last_layer``: the prototypes (the head's last layer) take no
        step during the first freeze_last_layer_fraction of the run (1 epoch of 100 in the paper), which the
        official code found to stabilise the start."""
        if self.last_layer_frozen(step, horizon):
            for p in (self.head.last_layer_direction, self.head.last_layer_scale):
                p.grad = None

    def after_step(self, step: int, horizon: int) -> None:
        self.momentum = 1 - (1 - self.momentum_base) * (math.cos(math.pi * min(step, horizon) / horizon) + 1) / 2
        online = list(self.backbone.parameters()) + list(self.head.parameters())
        target = list(self.teacher_backbone.parameters()) + list(self.teacher_head.parameters())
        ema_update(target, online, self.momentum)

    def logs(self):
        return {"ema_momentum": self.momentum, "teacher_temp": self._last_teacher_temp, **self.collapse_monitors()}
