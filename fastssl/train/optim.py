"""Optimizers and schedules: SGD, LARS and AdamW; warm-up + cosine for the lr, weight decay and EMA momentum."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as SimCLR and BYOL use it: SGD with momentum whose step for each weight tensor is
    scaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``. Parameter groups with ``lars=False`` (biases and
    normalisation parameters, by the papers' convention) take plain SGD steps without weight decay scaling.

    ``clip=True`` is LARC's clipping (NVIDIA apex; solo-learn's CIFAR recipes, with ``eta=0.02``): the local lr is
    ``min(eta * ||w|| / ||g + wd * w||, lr)``, so a tensor moves by at most ``eta * ||w||`` a step, and by plain SGD's
    step where that is smaller. Without it the lr multiplies the trust ratio (SimCLR's and BYOL's LARS, eta 0.001):
    every tensor moves by ``lr * eta * ||w||`` a step."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 clip: bool = False):
        if lr < 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        if not eta > 0:
            raise ValueError(f"lars_eta: the trust coefficient must be > 0, got {eta!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True,
                                      clip=bool(clip)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    if group.get("clip", False) and group["lr"] > 0:
                        # the local lr min(trust, lr), applied below as lr * min(trust / lr, 1); a group with an
                        # lr_scale clips at its unscaled lr, so that the scale multiplies the clipped step too
                        trust = torch.clamp(trust / (group["lr"] / group.get("lr_scale", 1.0)), max=1.0)
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float,
                     fixed_lr: Iterable[nn.Module] = (),
                     lr_scale: Iterable[tuple[nn.Module, float]] = ()) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/normalisation parameters (neither), the convention
    of SimCLR, BYOL and timm. Parameters that need no gradient (EMA targets) are left out.

    The parameters of the ``fixed_lr`` modules (SimSiam's predictor) form two more groups of the same kinds,
    marked ``fixed_lr=True``: :func:`set_hyperparameters` holds their lr at the base lr instead of following the
    schedule. Each ``(module, scale)`` of ``lr_scale`` (BYOL's predictor, its paper's Appendix F.2) puts that
    module's parameters into groups marked ``lr_scale=scale``, whose lr is always ``scale`` times the others'.
    Without either the result is the two groups above."""
    fixed_ids = {id(p) for module in fixed_lr for p in module.parameters()}
    scales: dict[int, float] = {}
    for module, scale in lr_scale:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr_scale: expected a finite scale > 0, got {scale!r}")
        scales.update({id(p): float(scale) for p in module.parameters()})
    groups: dict[tuple[bool, float, bool], list] = {(False, 1.0, True): [], (False, 1.0, False): []}
    seen = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decay = not (p.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault((id(p) in fixed_ids, scales.get(id(p), 1.0), decay), []).append(p)
    result = []
    for (fixed, scale, decay), params in groups.items():  # only the two plain groups can be empty
        group = dict(params=params, weight_decay=weight_decay if decay else 0.0, lars=decay, decay=decay)
        if fixed:
            group["fixed_lr"] = True
        if scale != 1.0:
            group["lr_scale"] = scale
        result.append(group)
    return result


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float, lars_eta: float = 0.001,
                    lars_clip: bool = False) -> torch.optim.Optimizer:
    """``lars_eta`` and ``lars_clip`` are LARS's trust coefficient and LARC clipping (see :class:`LARS`)."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta, clip=lars_clip)
    plain = [{k: v for k, v in g.items() if k != "lars"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, betas=(0.9, 0.95))
    raise ValueError(f"optimizer: sgd, lars or adamw, got {name!r}")


def cosine_schedule(step: int, total: int, base: float, final: float, warmup: int = 0,
                    warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup`` steps, then a half cosine to ``final`` at
    ``total`` steps (held after)."""
    if step < warmup:
        return warmup_start + (base - warmup_start) * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                        base_lr: float | None = None) -> None:
    """Every group's lr becomes ``lr`` (the schedule's value), except groups marked ``fixed_lr``, which take
    ``base_lr`` (or keep the lr they were built with when it is None); groups marked ``lr_scale`` take that many
    times the lr they would take otherwise; decayed groups take ``weight_decay``."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        if not group.get("fixed_lr", False):
            group["lr"] = lr * scale
        elif base_lr is not None:
            group["lr"] = base_lr * scale
        if group.get("decay", True):
            group["weight_decay"] = weight_decay


@torch.no_grad()
def ema_update(target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, in one fused foreach call over all tensors."""
    target, online = list(target), list(online)
    if target:
        torch._foreach_lerp_(target, online, 1.0 - momentum)
