"""Frozen-backbone feature extraction for the kNN and linear-probe evaluations.

    feats, labels = extract_features(backbone, load_batch, preprocess, num_samples=10_000)

``load_batch(index)`` gets an int64 CPU tensor of sample indices and returns ``(images, labels)``: uint8
images (B, H, W, C) (torch tensor or numpy array) and their integer labels (B,). ``preprocess`` turns that
uint8 batch, already on the backbone's device, into the float (B, C, h, w) input the backbone expects (resize,
normalisation): the caller owns it because it depends on the dataset and the model.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

Tensor = torch.Tensor
ArrayLike = Union[Tensor, np.ndarray]

# A progress bar only from this many batches on: short extractions (tests, small probes) stay quiet.
PROGRESS_MIN_BATCHES = 20


def extract_features(
    backbone: nn.Module,
    load_batch: Callable[[Tensor], tuple[ArrayLike, ArrayLike]],
    preprocess: Callable[[Tensor], Tensor],
    num_samples: Optional[int] = None,
    *,
    indices: Optional[Union[Sequence[int], Tensor, np.ndarray]] = None,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
    autocast: Optional[bool] = None,
    progress: Optional[bool] = None,
    desc: str = "features",
) -> tuple[Tensor, Tensor]:
    """Run a frozen backbone over a dataset: features float32 (N, F) and labels int64 (N,), both on the CPU.

    Samples are ``range(num_samples)`` or the given ``indices`` (exactly one of the two), in that order, fed
    to ``load_batch`` ``batch_size`` at a time. Memory stays bounded by one batch on the device plus the
    (N, F) float32 result on the host. The backbone runs under ``torch.no_grad()`` in eval mode (BatchNorm
    running statistics, no dropout); every submodule's own train/eval flag is restored afterwards, even on an
    error.

    Args:
        backbone: maps (B, C, h, w) to (B, F) features; outputs with more dims (e.g. (B, F, 1, 1)) are
            flattened.
        device: where the backbone runs; None = the device of its first parameter (CPU if it has none).
        autocast: bfloat16 autocast; None = on for CUDA, off elsewhere. Features come back in float32 anyway.
        progress: tqdm bar; None = only for extractions of PROGRESS_MIN_BATCHES batches or more.
    """
    order = _sample_order(num_samples, indices)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if device is None:
        first = next(backbone.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if autocast is None:
        autocast = device.type == "cuda"
    num_batches = -(-len(order) // batch_size)
    if progress is None:
        progress = num_batches >= PROGRESS_MIN_BATCHES

    features: Optional[Tensor] = None
    labels = torch.empty(len(order), dtype=torch.int64)
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"
            ):
                index = order[start : start + batch_size]
                images, batch_labels = load_batch(index)
                images, batch_labels = _check_batch(images, batch_labels, len(index), start)
                inputs = preprocess(images.to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = backbone(inputs)
                if not isinstance(out, Tensor) or out.dim() < 2 or out.shape[0] != len(index):
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"backbone must return a ({len(index)}, F) tensor for this batch, got {shape}"
                    )
                out = out.flatten(1).float()
                if features is None:
                    features = torch.empty(len(order), out.shape[1], dtype=torch.float32)
                features[start : start + len(index)] = out.cpu()
                labels[start : start + len(index)] = batch_labels
    finally:
        for module, training in modes:
            module.training = training
    if features is None:  # no samples: shape (0, 0), nothing was run to learn F
        features = torch.empty(0, 0, dtype=torch.float32)
    return features, labels


def _sample_order(num_samples, indices) -> Tensor:
    if (num_samples is None) == (indices is None):
        raise ValueError("give exactly one of num_samples and indices")
    if indices is None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        return torch.arange(num_samples, dtype=torch.int64)
    order = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
    if order.dim() != 1 or (order.numel() and (order.dtype.is_floating_point or order.dtype == torch.bool)):
        raise ValueError(
            f"indices must be a 1-D sequence of integers, got {order.dtype} {tuple(order.shape)}"
        )
    return order.to(torch.int64).cpu()


def _check_batch(images, labels, expected: int, start: int) -> tuple[Tensor, Tensor]:
    from fastssl.ops.augment import PackedImages

    labels = torch.as_tensor(labels)
    if isinstance(images, PackedImages):  # an image folder of mixed sizes: preprocess takes it as it is
        if len(images) != expected:
            raise ValueError(f"load_batch must return {expected} images for the batch at {start}, got {len(images)}")
    else:
        images = torch.as_tensor(images)
    if not isinstance(images, PackedImages) and (images.dtype != torch.uint8 or images.dim() != 4
                                                 or images.shape[0] != expected):
        raise ValueError(
            f"load_batch must return uint8 images ({expected}, H, W, C) for the batch at {start}, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.shape != (expected,) or labels.dtype.is_floating_point:
        raise ValueError(
            f"load_batch must return integer labels ({expected},) for the batch at {start}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return images, labels.to(torch.int64)


@torch.no_grad()
def effective_rank(x: torch.Tensor) -> float:
    """The effective rank (Roy and Vetterli, 2007) of a batch of embeddings (B, D): exp of the entropy of the
    singular values of the centred batch, normalised to sum to 1. D for embeddings spread evenly over D
    directions, 1 for embeddings that vary along one direction only (dimensional collapse), 0 for a constant
    batch. A collapse monitor for the non-contrastive methods, whose loss alone does not show it."""
    x = x.detach().float().cpu()
    centred = x - x.mean(dim=0, keepdim=True)
    # a batch whose spread is at the level of float32 rounding is constant: rank 0, not the rank of the noise
    if not torch.linalg.vector_norm(centred) > 1e-5 * torch.linalg.vector_norm(x):
        return 0.0
    s = torch.linalg.svdvals(centred)
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


@torch.no_grad()
def projection_spread(z: Optional[torch.Tensor]) -> dict[str, float]:
    """The collapse monitors BYOL and SimSiam log for a batch of projections z (B, D): ``z_std``, the std over the
    batch of the l2-normalised rows averaged over dimensions (SimSiam's Section 4.1: 0 for a constant output,
    about 1 / sqrt(D) for an even spread), and ``z_erank``, their :func:`effective_rank`, which also shows a
    collapse to a few directions that z_std misses. Before the first batch (z None): z_std 0, z_erank nan."""
    if z is None:
        return {"z_std": 0.0, "z_erank": float("nan")}
    z_std = torch.nn.functional.normalize(z.detach().float(), dim=-1).std(dim=0, correction=0).mean()
    return {"z_std": float(z_std), "z_erank": effective_rank(z)}
