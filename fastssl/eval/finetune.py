"""Labelled subsets for semi-supervised fine-tuning (``fastssl finetune --label-fraction F``), as in SimCLR's
and BYOL's 1% / 10% ImageNet protocol: a class-balanced fraction of the training labels."""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

Tensor = torch.Tensor


def class_balanced_subset(labels: Union[Tensor, np.ndarray], fraction: float, seed: int = 0) -> Tensor:
    """Sorted int64 indices (M,) of a class-balanced random subset holding ``fraction`` of the samples.

    M = round(fraction * N) (half up), raised to the number of classes present when smaller, because every
    class present keeps at least one example. The M slots are spread as evenly as the classes allow: each
    class gets floor(M / C) or one more, except that a class smaller than its share gives all its samples and
    the slots it cannot fill go to the others (water-filling), so the total stays exactly M. The extra slots
    go to the larger classes; ties between equal-sized classes, and which samples fill each class, are random
    but fixed by ``seed``.
    """
    labels = torch.as_tensor(labels)
    if (
        labels.dim() != 1
        or labels.numel() == 0
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"labels must be a non-empty 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    labels = labels.cpu().to(torch.int64)
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    classes, counts = torch.unique(labels, return_counts=True)
    total = max(math.floor(fraction * labels.numel() + 0.5), len(classes))
    generator = torch.Generator().manual_seed(seed)

    # Water-filling: visit classes from the smallest (ties in random order); each takes an equal share of what
    # is left, or all it has. The later (larger) classes absorb the remainder: the quotas sum to `total`.
    tie_break = torch.randperm(len(classes), generator=generator)
    visit = sorted(range(len(classes)), key=lambda i: (int(counts[i]), int(tie_break[i])))
    quota = [0] * len(classes)
    left = total
    for position, i in enumerate(visit):
        quota[i] = min(int(counts[i]), left // (len(classes) - position))
        left -= quota[i]

    chosen = []
    for i, label in enumerate(classes.tolist()):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: quota[i]]])
    return torch.sort(torch.cat(chosen)).values
