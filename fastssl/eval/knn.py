"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al., 2018, "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination"; the protocol of DINO's eval_knn.py).

Each test feature votes with its k most cosine-similar training features; neighbour j adds exp(s_j / T) to the
score of its class, and the prediction is the class with the highest score.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Auto chunk: test rows per chunk such that the (chunk, N_train) similarity block holds at most this many
# elements (256 MiB in float32): 1342 rows against CIFAR-10's 50,000 train features, 52 against ImageNet's.
CHUNK_ELEMENTS = 1 << 26


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: Optional[int] = None,
    chunk: Optional[int] = None,
    top5: bool = False,
) -> Union[float, tuple[float, float]]:
    """Top-1 accuracy (a fraction in [0, 1]) of the weighted kNN classifier; ``(top1, top5)`` if ``top5``.

    Args:
        train_feats: (N_train, F) features of the labelled bank; L2-normalised here (any scale is fine).
        train_labels: (N_train,) integer labels in [0, num_classes).
        test_feats: (N_test, F).
        test_labels: (N_test,) integer labels in [0, num_classes).
        k: neighbours per test sample. Clamped to N_train when larger (a small labelled subset, e.g. a 1%
            label fraction of a small dataset, still gets an answer: all of its samples vote).
        temperature: T in the weights exp(similarity / T).
        num_classes: None = 1 + the largest label in either split.
        chunk: test rows per similarity block; None = as many as fit CHUNK_ELEMENTS. The full (N_test,
            N_train) matrix never exists; the answer does not depend on the chunk.
        top5: also return top-5 accuracy (top-min(5, num_classes), so it is 1.0 with fewer than 6 classes).

    Runs on the device of ``train_feats`` (the others are moved there), in float32. Ties between class scores
    go to the smaller class index.
    """
    scores = knn_scores(
        train_feats, train_labels, test_feats, k, temperature, num_classes, chunk, test_labels
    )
    return _accuracies(scores, test_labels.to(scores.device), top5)


def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: Optional[int] = None,
    chunk: Optional[int] = None,
    test_labels: Optional[Tensor] = None,
) -> Tensor:
    """Class scores (N_test, num_classes) of the weighted kNN vote; see knn_accuracy for the arguments.

    Each row is sum_j exp((s_j - s_max) / T) over the k neighbours of that class: subtracting the row's
    largest similarity s_max scales the row by a positive constant, which changes no ranking but keeps exp
    finite at small T. ``test_labels`` is only checked (range and shape); with num_classes=None it counts too.
    """
    _check_features("train_feats", train_feats)
    _check_features("test_feats", test_feats)
    for name, feats in (("train_feats", train_feats), ("test_feats", test_feats)):
        if feats.shape[0] == 0:
            raise ValueError(f"{name} must have at least one row")
    if test_feats.shape[1] != train_feats.shape[1]:
        raise ValueError(
            f"test_feats must have the feature dim of train_feats ({train_feats.shape[1]}), "
            f"got {tuple(test_feats.shape)}"
        )
    _check_labels("train_labels", train_labels, train_feats.shape[0])
    named_labels = {"train_labels": train_labels}
    if test_labels is not None:
        _check_labels("test_labels", test_labels, test_feats.shape[0])
        named_labels["test_labels"] = test_labels
    if num_classes is None:
        num_classes = 1 + max(int(labels.max()) for labels in named_labels.values())
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    for name, labels in named_labels.items():
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
            )
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk is not None and chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")

    device = train_feats.device
    n_train = train_feats.shape[0]
    k = min(k, n_train)
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // n_train)
    bank = F.normalize(train_feats.float(), dim=1)  # (N_train, F)
    bank_labels = train_labels.to(device=device, dtype=torch.int64)
    scores = torch.zeros(test_feats.shape[0], num_classes, dtype=torch.float32, device=device)
    for start in range(0, test_feats.shape[0], chunk):
        queries = F.normalize(test_feats[start : start + chunk].to(device).float(), dim=1)  # (c, F)
        similarity = queries @ bank.T  # (c, N_train): the only block that exists at a time
        top_sim, top_idx = similarity.topk(k, dim=1)  # (c, k), sorted descending
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        scores[start : start + chunk].scatter_add_(1, bank_labels[top_idx], weights)
    return scores


def _accuracies(scores: Tensor, labels: Tensor, top5: bool) -> Union[float, tuple[float, float]]:
    top1 = (scores.argmax(dim=1) == labels).float().mean().item()
    if not top5:
        return top1
    best5 = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (N_test, 5)
    return top1, (best5 == labels[:, None]).any(dim=1).float().mean().item()


def _check_features(name: str, feats: Tensor) -> None:
    if not isinstance(feats, Tensor) or feats.dim() != 2 or not feats.dtype.is_floating_point:
        what = f"{feats.dtype} {tuple(feats.shape)}" if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"{name} must be a floating (N, F) tensor, got {what}")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_labels(name: str, labels: Tensor, rows: int) -> None:
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        what = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor, got {what}")
    if labels.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},) to match the features, got {tuple(labels.shape)}")
