"""`fastssl eval`: the frozen backbone of a checkpoint, judged by weighted kNN and a linear probe.

    knn_top1, linear_top1 = evaluate_checkpoint("runs/simclr/last.pt", "cifar10")

The backbone is rebuilt from the checkpoint's spec; images are only resized to the training view size and
normalised with the training statistics (fastssl.ops.augment with identity parameters), as SSL evaluations do.
Image-text methods (clip) also get zero-shot accuracy on the test split; text methods (gpt, mlm) get their own
metrics on the validation split of their corpus instead (fastssl.eval.text).
"""

from __future__ import annotations

import math
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


def load_method(state: dict) -> torch.nn.Module:
    """The checkpoint's whole method (backbone, heads, text encoders), rebuilt and loaded, in eval mode."""
    from fastssl.data import CharTokenizer
    from fastssl.methods import METHODS

    if state["method"] not in METHODS:
        raise ValueError(f"checkpoint: method {state['method']!r} is not one of {', '.join(sorted(METHODS))}")
    cls = METHODS[state["method"]]
    spec, method_args = state["backbone"], state["config"]["method_args"]
    if cls.data_kind == "text":
        method = cls.build_text(CharTokenizer(state["tokenizer_chars"]), spec["kwargs"], method_args)
    else:
        # checkpoints from before the small-image recipes were built with the methods' ImageNet options
        method = cls.build(spec["name"], spec["kwargs"], method_args, in_channels=state["image_shape"][-1],
                           image_size=state["view_size"], small=state.get("small_images", False))
    method.load_state_dict(state["method_state"])
    return method.eval()


def data_kind(state: dict) -> str:
    """The checkpoint's method's data kind ("image", "text" or "image_text"; fastssl.methods.base)."""
    from fastssl.methods import METHODS

    return METHODS[state["method"]].data_kind if state["method"] in METHODS else "image"


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
                        batch_size: int = 512, plot: bool = True, out=None) -> dict[str, float]:
    """Print ``knn_top1: <float>`` (and ``linear_top1: <float>``) for the checkpoint's backbone on ``data``'s test
    split, with the training split as the kNN bank and probe training set; for an image-text method also
    ``zero_shot_top1: <float>``. A text method's checkpoint prints its own metrics instead
    (:func:`fastssl.eval.text.evaluate_text_checkpoint`). Returns the numbers."""
    from fastssl.data import load_image_dataset
    from fastssl.data.views import channel_normalization
    from fastssl.eval.features import effective_rank, extract_features
    from fastssl.eval.knn import knn_accuracy
    from fastssl.eval.linear import linear_probe
    from fastssl.models import ResNet
    from fastssl.train.distributed import resolve_device
    from fastssl.train.engine import dataset_image_shape

    out = out or sys.stdout
    state = load_checkpoint(checkpoint)
    if data_kind(state) == "text":
        from fastssl.eval.text import evaluate_text_checkpoint

        return evaluate_text_checkpoint(state, data, device=device, out=out)
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
    mean, std = channel_normalization(state["mean"], state["std"], dataset_image_shape(train)[-1])
    preprocess = make_preprocess(state["view_size"], mean, std, channels_last)

    def loader(dataset):
        return lambda index: dataset.batch(index.numpy())

    features = {}
    for name, dataset, limit in (("train", train, train_limit), ("test", test, test_limit)):
        subset = _subset(len(dataset), limit, seed=1)  # extract_features takes a count or indices, not both
        features[name] = extract_features(backbone, loader(dataset), preprocess,
                                          len(dataset) if subset is None else None, indices=subset,
                                          batch_size=batch_size, device=dev, desc=f"{name} features")
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    # how many directions the test embeddings use (fastssl.eval.effective_rank): a collapsed backbone has 1 or 2.
    # Printed first, so that pretraining's closing evaluation (kNN only) still ends with the knn_top1 line.
    results = {"feature_erank": effective_rank(test_x)}
    print(f"feature_erank: {results['feature_erank']:.1f}", file=out, flush=True)
    results["knn_top1"] = float(knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07))
    print(f"knn_top1: {results['knn_top1']:.4f}", file=out, flush=True)
    if linear:
        probe = linear_probe(train_x, train_y, test_x, test_y)
        results["linear_top1"] = float(probe["linear_top1"])
        print(f"linear_top1: {results['linear_top1']:.4f}", file=out, flush=True)
    if data_kind(state) == "image_text":
        from fastssl.eval.zero_shot import zero_shot_accuracy

        if not getattr(test, "classes", None):
            raise ValueError(f"data: {data!r} has no class names; zero-shot classification needs them")
        method = load_method(state)
        with torch.no_grad():
            image_embeddings = method.image_projection(test_x)  # the projection of the backbone features above
            results["zero_shot_top1"] = zero_shot_accuracy(image_embeddings, test_y,
                                                           method.class_embeddings(test.classes))
        print(f"zero_shot_top1: {results['zero_shot_top1']:.4f}", file=out, flush=True)
    if plot:
        from fastssl.eval.plots import pca_2d, save_scatter_plot

        path = Path(checkpoint).with_name(Path(checkpoint).stem + "_embeddings_pca.png")
        classes = getattr(test, "classes", None) or [str(c) for c in range(int(test_y.max()) + 1)]
        save_scatter_plot(path, pca_2d(test_x), test_y, classes,
                          title=f"{state['method']} step {state['step']}: PCA of test embeddings")
    return results


def _train_classifier(backbone: torch.nn.Module, num_classes: int, train, indices: np.ndarray, test,
                      view_size, mean, std, epochs: int, batch_size: int, lr: float, device: torch.device,
                      seed: int, desc: str) -> float:
    """Fine-tune ``backbone`` + a linear head on ``train[indices]`` (SGD, cosine lr, crop-and-flip views) and
    return its top-1 accuracy on ``test``."""
    from tqdm.auto import tqdm

    from fastssl.data import view_pipeline
    from fastssl.models import ResNet
    from fastssl.train.optim import cosine_schedule

    torch.manual_seed(seed)
    head = torch.nn.Linear(backbone.num_features, num_classes)
    model = torch.nn.Sequential(backbone, head).to(device)
    channels_last = isinstance(backbone, ResNet)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipe = view_pipeline("mae", size=tuple(view_size), mean=tuple(mean), std=tuple(std), channels_last=channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = max(1, math.ceil(len(indices) / batch_size))
    total = epochs * steps_per_epoch
    g = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    with tqdm(total=total, desc=desc, unit="step", disable=total < 20, mininterval=2.0) as bar:
        for _ in range(epochs):
            order = indices[torch.randperm(len(indices), generator=g).numpy()]
            for start in range(0, len(order), batch_size):
                images, labels = train.batch(order[start:start + batch_size])
                if len(images) < 2:
                    continue  # BatchNorm needs two samples
                for group in optimizer.param_groups:
                    group["lr"] = cosine_schedule(step, total, lr, 0.0)
                (view,) = pipe(images.to(device), generator=g)
                loss = torch.nn.functional.cross_entropy(model(view), labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
    model.eval()
    preprocess = make_preprocess(view_size, mean, std, channels_last)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            images, labels = test.batch(np.arange(start, min(start + 512, len(test))))
            correct += int((model(preprocess(images.to(device))).argmax(1).cpu() == labels).sum())
    return correct / len(test)


def finetune_checkpoint(checkpoint: str | Path, data: Optional[str] = None, label_fraction: float = 0.1,
                        epochs: int = 30, batch_size: int = 256, lr: float = 0.05, device: str = "auto",
                        seed: int = 0, scratch: bool = True, out=None) -> dict[str, float]:
    """Fine-tune the whole pretrained backbone on a class-balanced ``label_fraction`` of the training labels and
    print ``finetune_top1``; with ``scratch``, also the same backbone trained from random initialisation on the same
    labels (``scratch_top1``): the gain is what self-supervised pretraining bought."""
    from fastssl.data import load_image_dataset
    from fastssl.data.views import channel_normalization
    from fastssl.eval.finetune import class_balanced_subset
    from fastssl.models import build_backbone
    from fastssl.train.distributed import resolve_device
    from fastssl.train.engine import dataset_image_shape

    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction: must lie in (0, 1], got {label_fraction}")
    out = out or sys.stdout
    state = load_checkpoint(checkpoint)
    if data_kind(state) == "text":
        raise ValueError(f"checkpoint: {state['method']} is a text method; fine-tuning trains an image classifier "
                         "on labelled images (`fastssl eval` reports the text methods' own metrics)")
    data = data or state["config"]["data"]
    dev = resolve_device(device)
    train = load_image_dataset(data, split="train")
    test = load_image_dataset(data, split="test")
    if train.labels is None or test.labels is None:
        raise ValueError(f"data: {data!r} has no labels; fine-tuning needs them")
    indices = class_balanced_subset(train.labels, label_fraction, seed=seed).numpy()
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    mean, std = channel_normalization(state["mean"], state["std"], dataset_image_shape(train)[-1])
    # Fewer labels, more epochs: keep the number of steps comparable across fractions.
    epochs = max(1, round(epochs / max(label_fraction, 1e-9) ** 0.5)) if label_fraction < 1 else epochs
    print(f"fine-tuning on {len(indices)} labelled images ({label_fraction:.0%}), {epochs} epochs", file=out)
    results = {}
    runs = [("finetune_top1", load_backbone(state))]
    if scratch:
        spec = state["backbone"]
        torch.manual_seed(seed)
        runs.append(("scratch_top1", build_backbone(spec["name"], **spec["kwargs"])))
    for name, backbone in runs:
        results[name] = _train_classifier(backbone, num_classes, train, indices, test, state["view_size"], mean, std,
                                          epochs, batch_size, lr, dev, seed, desc=name.replace("_top1", ""))
        print(f"{name}: {results[name]:.4f}", file=out, flush=True)
    return results
