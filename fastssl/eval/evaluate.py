"""`fastssl eval`: the frozen backbone of a checkpoint, judged by weighted kNN and a linear probe.

    knn_top1, linear_top1 = evaluate_checkpoint("runs/simclr/last.pt", "cifar10")

The backbone is rebuilt from the checkpoint's spec; images are only resized to the training view size and
normalised with the training statistics (fastssl.ops.augment with identity parameters), as SSL evaluations do.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fastssl.train.checkpoint import load_checkpoint


def load_backbone(state: dict) -> torch.nn.Module:
    """The checkpoint's backbone with its trained weights."""
    from fastssl.models import build_backbone

    spec = state["backbone"]
    backbone = build_backbone(spec["name"], **spec["kwargs"])
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state["method_state"].items() if k.startswith(prefix)}
    backbone.load_state_dict(weights)
    return backbone


def make_preprocess(view_size, mean, std, channels_last: bool = False):
    """uint8 images (B, H, W, C) or PackedImages, on any device -> normalised float (B, C, h, w) at the training
    view size: a whole-image crop, resized and normalised."""
    from fastssl.ops.augment import AugmentParams, PackedImages, augment

    def preprocess(images) -> torch.Tensor:
        if isinstance(images, PackedImages):
            params = AugmentParams.identity(len(images), images.heights, images.widths, device=images.device)
        else:
            params = AugmentParams.identity(images.shape[0], images.shape[1], images.shape[2], device=images.device)
        return augment(images, params, tuple(view_size), mean, std, channels_last=channels_last)

    return preprocess


def _subset(n: int, limit: Optional[int], seed: int) -> Optional[np.ndarray]:
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def evaluate_checkpoint(checkpoint: str | Path, data: Optional[str] = None, device: str = "auto",
                        train_limit: Optional[int] = None, test_limit: Optional[int] = None, linear: bool = True,
                        batch_size: int = 512, plot: bool = True, out=sys.stdout) -> dict[str, float]:
    """Print ``knn_top1: <float>`` (and ``linear_top1: <float>``) for the checkpoint's backbone on ``data``'s test
    split, with the training split as the kNN bank and probe training set. Returns the numbers."""
    from fastssl.data import load_image_dataset
    from fastssl.data.views import ViewPipeline, ViewSpec
    from fastssl.eval.features import extract_features
    from fastssl.eval.knn import knn_accuracy
    from fastssl.eval.linear import linear_probe
    from fastssl.models import ResNet
    from fastssl.train.distributed import resolve_device

    state = load_checkpoint(checkpoint)
    data = data or state["config"]["data"]
    dev = resolve_device(device)
    backbone = load_backbone(state).to(dev)
    channels_last = isinstance(backbone, ResNet)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    train = load_image_dataset(data, split="train")
    test = load_image_dataset(data, split="test")
    if train.labels is None or test.labels is None:
        raise ValueError(f"data: {data!r} has no labels; kNN and linear evaluation need them")
    channels = train.image_shape[-1] if hasattr(train, "image_shape") else train.images.channels
    mean, std = ViewPipeline([ViewSpec()], mean=tuple(state["mean"]), std=tuple(state["std"])).normalization(channels)
    preprocess = make_preprocess(state["view_size"], mean, std, channels_last)

    def loader(dataset):
        return lambda index: dataset.batch(index.numpy())

    features = {}
    for name, dataset, limit in (("train", train, train_limit), ("test", test, test_limit)):
        features[name] = extract_features(backbone, loader(dataset), preprocess, len(dataset),
                                          indices=_subset(len(dataset), limit, seed=1), batch_size=batch_size,
                                          device=dev, desc=f"{name} features")
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    results = {"knn_top1": float(knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07))}
    print(f"knn_top1: {results['knn_top1']:.4f}", file=out, flush=True)
    if linear:
        probe = linear_probe(train_x, train_y, test_x, test_y)
        results["linear_top1"] = float(probe["linear_top1"])
        print(f"linear_top1: {results['linear_top1']:.4f}", file=out, flush=True)
    if plot:
        from fastssl.eval.plots import pca_2d, save_scatter_plot

        path = Path(checkpoint).with_name(Path(checkpoint).stem + "_embeddings_pca.png")
        classes = getattr(test, "classes", None) or [str(c) for c in range(int(test_y.max()) + 1)]
        save_scatter_plot(path, pca_2d(test_x), test_y, classes,
                          title=f"{state['method']} step {state['step']}: PCA of test embeddings")
    return results
