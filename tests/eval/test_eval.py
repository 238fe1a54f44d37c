"""Evaluation: kNN and linear probe on toys whose answer is known, the labelled-subset sampler, feature
extraction, and the PNG writers."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.eval import (
    class_balanced_subset,
    extract_features,
    knn_accuracy,
    knn_scores,
    linear_probe,
    pca_2d,
    save_line_plot,
    save_scatter_plot,
)
from fastssl.eval.linear import stratified_split
from fastssl.eval.plots import PALETTE, _nice_ticks, _tick_labels


def blobs(n, dim, classes, spread, seed):
    """Gaussian blobs: unit noise around class centres `spread` apart (in expectation); labels uniform."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * spread
    labels = torch.randint(0, classes, (n,), generator=g)
    return torch.randn(n, dim, generator=g) + centres[labels], labels


# ------------------------------------------------------------------------------------------------------------
# kNN
# ------------------------------------------------------------------------------------------------------------


def test_knn_separable_blobs_are_perfect():
    feats, labels = blobs(600, 32, 5, spread=20.0, seed=0)
    top1, top5 = knn_accuracy(feats[:500], labels[:500], feats[500:], labels[500:], top5=True)
    assert top1 == 1.0 and top5 == 1.0


def test_knn_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    train_labels, test_labels = (
        torch.randint(0, 10, (2000,), generator=g),
        torch.randint(0, 10, (2000,), generator=g),
    )
    top1 = knn_accuracy(train, train_labels, test, test_labels)
    assert abs(top1 - 0.1) < 0.04  # binomial std at 2000 samples is 0.0067


def test_knn_weights_beat_majority_vote():
    # The query (2, 0) has one class-1 neighbour at similarity 1 and three class-0 neighbours at similarity
    # 0.8. Weighted (T = 0.07): class 1 scores 1, class 0 scores 3 exp(-0.2 / 0.07) = 0.172, so class 1 wins;
    # as T grows every weight tends to 1 and the 3-to-1 majority wins.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [1.6, 1.2], [-1.0, 0.0]])
    train_labels = torch.tensor([1, 0, 0, 0, 1])
    query, query_label = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    scores = knn_scores(train, train_labels, query, k=4, temperature=0.07)
    expected = torch.tensor([[3 * math.exp(-0.2 / 0.07), 1.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert knn_accuracy(train, train_labels, query, query_label, k=4, temperature=0.07) == 1.0
    assert knn_accuracy(train, train_labels, query, query_label, k=4, temperature=1e6) == 0.0


def test_knn_chunking_does_not_change_the_answer():
    train, train_labels = blobs(300, 8, 4, spread=1.0, seed=2)
    test, test_labels = blobs(97, 8, 4, spread=1.0, seed=3)
    whole = knn_scores(train, train_labels, test, chunk=10_000)
    for chunk in (1, 7, 64):
        torch.testing.assert_close(
            knn_scores(train, train_labels, test, chunk=chunk), whole, rtol=1e-5, atol=1e-6
        )
        assert knn_accuracy(train, train_labels, test, test_labels, chunk=chunk) == knn_accuracy(
            train, train_labels, test, test_labels, chunk=10_000
        )


def test_knn_clamps_k_to_the_bank_size():
    train, train_labels = blobs(3, 4, 2, spread=1.0, seed=4)
    test, test_labels = blobs(20, 4, 2, spread=1.0, seed=5)
    clamped = knn_scores(train, train_labels, test, k=20, num_classes=2)
    torch.testing.assert_close(clamped, knn_scores(train, train_labels, test, k=3, num_classes=2))


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(train_labels=torch.zeros(9, dtype=torch.int64)), "train_labels"),
        (dict(train_labels=torch.zeros(10)), "train_labels"),
        (dict(test_labels=torch.full((5,), 3)), "test_labels"),
        (dict(test_feats=torch.randn(5, 3)), "test_feats"),
        (dict(train_feats=torch.full((10, 4), float("nan"))), "train_feats"),
        (dict(train_feats=torch.randn(10)), "train_feats"),
        (dict(k=0), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(chunk=0), "chunk"),
    ],
)
def test_knn_bad_inputs_name_the_argument(change, name):
    args = dict(
        train_feats=torch.randn(10, 4),
        train_labels=torch.randint(0, 3, (10,)),
        test_feats=torch.randn(5, 4),
        test_labels=torch.randint(0, 3, (5,)),
        num_classes=3,
    )
    args.update(change)
    with pytest.raises(ValueError, match=name):
        knn_accuracy(**args)


# ------------------------------------------------------------------------------------------------------------
# Linear probe
# ------------------------------------------------------------------------------------------------------------


def test_linear_probe_separable_blobs_are_perfect():
    feats, labels = blobs(700, 16, 3, spread=10.0, seed=6)
    result = linear_probe(feats[:500], labels[:500], feats[500:], labels[500:], max_iter=50)
    assert result["linear_top1"] == 1.0 and result["linear_top5"] == 1.0
    assert result["val_top1"] == 1.0
    assert set(result["val_top1_per_weight_decay"]) == {0.0, 1e-4, 1e-3, 1e-2, 1e-1}


def test_linear_probe_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(7)
    train, test = torch.randn(800, 16, generator=g), torch.randn(2000, 16, generator=g)
    train_labels, test_labels = (
        torch.randint(0, 4, (800,), generator=g),
        torch.randint(0, 4, (2000,), generator=g),
    )
    result = linear_probe(train, train_labels, test, test_labels, max_iter=50)
    assert abs(result["linear_top1"] - 0.25) < 0.05  # binomial std at 2000 samples is 0.0097


def test_linear_probe_is_deterministic():
    feats, labels = blobs(500, 12, 4, spread=0.6, seed=8)
    first = linear_probe(feats[:400], labels[:400], feats[400:], labels[400:], max_iter=30, seed=3)
    second = linear_probe(feats[:400], labels[:400], feats[400:], labels[400:], max_iter=30, seed=3)
    assert first == second


def test_linear_probe_chooses_weight_decay_without_the_test_split():
    # Noisy blobs: the grid's validation accuracies differ, so the choice means something.
    feats, labels = blobs(600, 24, 4, spread=0.3, seed=9)
    train, train_labels, test, test_labels = feats[:400], labels[:400], feats[400:], labels[400:]
    grid = (0.0, 0.01, 0.1, 1.0)
    reference = linear_probe(train, train_labels, test, test_labels, weight_decays=grid, max_iter=30)
    assert len(set(reference["val_top1_per_weight_decay"].values())) > 1
    g = torch.Generator().manual_seed(10)
    other_test = torch.randn(50, 24, generator=g)
    for test_feats, test_y in (
        (test, test_labels[torch.randperm(200, generator=g)]),
        (other_test, test_labels[:50]),
    ):
        result = linear_probe(
            train, train_labels, test_feats, test_y, weight_decays=grid, max_iter=30, num_classes=4
        )
        assert result["weight_decay"] == reference["weight_decay"]
        assert result["val_top1_per_weight_decay"] == reference["val_top1_per_weight_decay"]


def test_linear_probe_single_weight_decay_needs_no_validation():
    feats, labels = blobs(300, 8, 3, spread=10.0, seed=11)
    result = linear_probe(
        feats[:200], labels[:200], feats[200:], labels[200:], weight_decays=[1e-4], val_fraction=0
    )
    assert result["weight_decay"] == 1e-4 and result["val_top1"] is None and result["linear_top1"] == 1.0


def test_stratified_split_holds_out_each_class_share():
    labels = torch.tensor([0] * 50 + [1] * 21 + [2] * 1 + [3] * 8)[torch.randperm(80)]
    is_val = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[is_val], minlength=4).tolist() == [
        5,
        2,
        0,
        1,
    ]  # class 2 keeps its only sample
    assert torch.equal(is_val, stratified_split(labels, 0.1, seed=0))
    assert not torch.equal(is_val, stratified_split(labels, 0.1, seed=1))


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(test_labels=torch.full((20,), 5)), "test_labels"),
        (dict(train_labels=torch.randint(0, 3, (59,))), "train_labels"),
        (dict(test_feats=torch.randn(20, 5)), "test_feats"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(weight_decays=[-1.0]), "weight_decays"),
        (dict(max_iter=0), "max_iter"),
    ],
)
def test_linear_probe_bad_inputs_name_the_argument(change, name):
    args = dict(
        train_feats=torch.randn(60, 4),
        train_labels=torch.randint(0, 3, (60,)),
        test_feats=torch.randn(20, 4),
        test_labels=torch.randint(0, 3, (20,)),
        num_classes=3,
    )
    args.update(change)
    with pytest.raises(ValueError, match=name):
        linear_probe(**args)


# ------------------------------------------------------------------------------------------------------------
# Labelled subsets
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.37, 1.0])
def test_class_balanced_subset_properties(seed, fraction):
    g = torch.Generator().manual_seed(seed)
    classes = 2 + seed * 3
    weights = torch.rand(classes, generator=g) ** 3 + 0.01  # strongly imbalanced
    labels = torch.multinomial(weights, 1000 + seed, replacement=True, generator=g)
    present, sizes = torch.unique(labels, return_counts=True)
    subset = class_balanced_subset(labels, fraction, seed)

    assert subset.dtype == torch.int64
    assert torch.equal(subset, torch.unique(subset))  # sorted, no repeats
    assert len(subset) == max(math.floor(fraction * len(labels) + 0.5), len(present))
    taken = torch.bincount(labels[subset], minlength=classes)[present]
    assert (taken >= 1).all()
    # Water-filling: a class has fewer than another's count minus one only when it gave all it has.
    for a in range(len(present)):
        assert taken[a] >= min(sizes[a], taken.max() - 1)
    assert torch.equal(subset, class_balanced_subset(labels.numpy(), fraction, seed))


def test_class_balanced_subset_even_split_and_seed():
    labels = torch.arange(10).repeat(100)
    subset = class_balanced_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [10] * 10
    assert not torch.equal(subset, class_balanced_subset(labels, 0.1, seed=1))
    assert torch.equal(class_balanced_subset(labels, 1.0, seed=0), torch.arange(1000))


@pytest.mark.parametrize(
    "labels, fraction, name",
    [
        (torch.zeros(10, dtype=torch.int64), 0.0, "fraction"),
        (torch.zeros(10, dtype=torch.int64), 1.5, "fraction"),
        (torch.zeros(10), 0.5, "labels"),
        (torch.zeros(0, dtype=torch.int64), 0.5, "labels"),
        (torch.tensor([0, -1, 2]), 0.5, "labels"),
    ],
)
def test_class_balanced_subset_bad_inputs(labels, fraction, name):
    with pytest.raises(ValueError, match=name):
        class_balanced_subset(labels, fraction, seed=0)


# ------------------------------------------------------------------------------------------------------------
# Feature extraction
# ------------------------------------------------------------------------------------------------------------


class TinyBackbone(torch.nn.Module):
    """(B, 3, 4, 4) -> (B, 5, 1, 1), with a BatchNorm whose running statistics must stay frozen."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)
        self.proj = torch.nn.Conv2d(3, 5, kernel_size=4)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.proj(self.norm(x)))


def test_extract_features_matches_a_direct_pass():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    backbone.norm.running_mean.fill_(0.3)
    backbone.dropout.eval()  # a mixed state, which must come back exactly
    images = np.random.default_rng(0).integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(23) % 7
    calls = []

    def load_batch(index):
        calls.append(len(index))
        return images[index.numpy()], labels[index.numpy()]

    def preprocess(batch):
        return batch.permute(0, 3, 1, 2).float() / 255

    indices = [22, 0, 5, 9, 1, 3, 17]
    feats, got_labels = extract_features(backbone, load_batch, preprocess, indices=indices, batch_size=3)
    assert calls == [3, 3, 1]
    assert feats.dtype == torch.float32 and feats.shape == (7, 5) and got_labels.dtype == torch.int64
    assert got_labels.tolist() == labels[indices].tolist()
    assert backbone.training and not backbone.dropout.training and backbone.norm.training
    assert torch.all(backbone.norm.running_mean == 0.3)

    backbone.eval()
    with torch.no_grad():
        expected = backbone(preprocess(torch.from_numpy(images[indices]))).flatten(1)
    torch.testing.assert_close(feats, expected)
    all_feats, all_labels = extract_features(backbone, load_batch, preprocess, num_samples=23, batch_size=10)
    assert all_feats.shape == (23, 5) and all_labels.tolist() == labels.tolist()
    assert not backbone.training


def test_extract_features_bad_inputs():
    backbone = TinyBackbone()

    def preprocess(batch):
        return batch.permute(0, 3, 1, 2).float()

    def float_images(index):
        return torch.zeros(len(index), 4, 4, 3), torch.zeros(len(index), dtype=torch.int64)

    with pytest.raises(ValueError, match="load_batch"):
        extract_features(backbone, float_images, preprocess, num_samples=4)
    with pytest.raises(ValueError, match="num_samples and indices"):
        extract_features(backbone, float_images, preprocess, num_samples=4, indices=[0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(backbone, float_images, preprocess, num_samples=4, batch_size=0)
    assert backbone.training  # restored after the error too


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------


def test_line_plot_writes_a_png_of_the_requested_size(tmp_path):
    steps = np.arange(0, 500, 5)
    losses = 3 * np.exp(-steps / 100) + 0.2
    losses[30] = np.nan  # a diverged step is skipped, not fatal
    path = tmp_path / "loss.png"
    save_line_plot(path, steps, losses, title="loss", xlabel="step", ylabel="loss", size=(640, 400))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 400)
        colours = {colour for _, colour in image.convert("RGB").getcolors(640 * 400)}
    assert PALETTE[0] in colours  # the line was drawn
    save_line_plot(
        tmp_path / "flat.png", None, torch.ones(3), title="constant"
    )  # a zero range still gets an axis
    with Image.open(tmp_path / "flat.png") as image:
        assert image.size == (800, 500)


def test_scatter_plot_colours_every_class(tmp_path):
    feats, labels = blobs(300, 10, 4, spread=5.0, seed=12)
    path = tmp_path / "scatter.png"
    save_scatter_plot(path, pca_2d(feats), labels, ["a", "b", "c", "d"], title="pca", size=(700, 500))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 500)
        colours = {colour for _, colour in image.convert("RGB").getcolors(700 * 500)}
    assert all(PALETTE[c] in colours for c in range(4))


@pytest.mark.parametrize(
    "scales",
    [
        10
        * 0.8 ** torch.arange(40.0),  # a decaying spectrum: the randomised subspace converges in a few steps
        torch.linspace(10, 1, 8),  # flat, but F <= the subspace width: exact
    ],
)
def test_pca_2d_matches_the_svd(scales):
    g = torch.Generator().manual_seed(13)
    feats = torch.randn(200, len(scales), generator=g, dtype=torch.float64) * scales.double() + 3.0
    projected = pca_2d(feats)
    centred = feats - feats.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    expected = centred @ vh[:2].T
    signs = (projected.double() * expected).sum(dim=0).sign()  # the SVD's signs are arbitrary
    assert projected.shape == (200, 2) and projected.dtype == torch.float32
    torch.testing.assert_close(projected.double(), expected * signs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lo, hi", [(0, 3e-4), (0.11, 0.93), (-3, 7), (5, 5), (1e6, 1.00002e6), (0, 2e5)])
def test_axis_ticks_cover_the_data_and_read_apart(lo, hi):
    ticks, (axis_lo, axis_hi) = _nice_ticks(lo, hi)
    assert axis_lo <= lo and axis_hi >= hi and 3 <= len(ticks) <= 12
    labels = _tick_labels(ticks)
    assert len(set(labels)) == len(labels), labels


def test_plots_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="xs"):
        save_line_plot(tmp_path / "x.png", [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="ys"):
        save_line_plot(tmp_path / "x.png", None, [])
    with pytest.raises(ValueError, match="points"):
        save_scatter_plot(tmp_path / "x.png", np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        save_scatter_plot(tmp_path / "x.png", np.zeros((4, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="class_names"):
        save_scatter_plot(tmp_path / "x.png", np.zeros((4, 2)), [0, 1, 2, 1], ["a", "b"])
    with pytest.raises(ValueError, match="features"):
        pca_2d(torch.zeros(5, 1))


def test_evaluate_checkpoint_limits_draw_subsets_of_the_requested_sizes(tmp_path, monkeypatch):
    """--train-limit / --test-limit: features of seeded random subsets of those sizes (not the whole splits)."""
    import fastssl.eval.features as features
    from fastssl.eval.evaluate import evaluate_checkpoint
    from fastssl.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8),
             y=rng.integers(0, 3, 60))
    Trainer(TrainConfig(data=str(tmp_path / "data.npz"), out=str(tmp_path / "run"), backbone="resnet18",
                        backbone_args={"width": 0.125}, batch_size=8, max_steps=0, device="cpu",
                        progress=False)).run()
    sizes = []
    real = features.extract_features

    def recording(*args, **kwargs):
        feats, labels = real(*args, **kwargs)
        sizes.append(len(labels))
        return feats, labels

    monkeypatch.setattr(features, "extract_features", recording)
    result = evaluate_checkpoint(tmp_path / "run" / "last.pt", train_limit=20, test_limit=5, linear=False,
                                 plot=False)
    assert sizes == [20, 5] and 0 <= result["knn_top1"] <= 1


@pytest.mark.parametrize("rows, dim", [(50, 7), (301, 33)])
def test_effective_rank_counts_the_directions_in_use(rows, dim):
    """exp(entropy) of the normalised singular values of the centred batch, against its float64 formula; the
    number of equally used directions for isotropic data in a k-dim subspace, 1 for a line, 0 for a constant."""
    from fastssl.eval import effective_rank

    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2.0, dim, dtype=torch.float64)
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    # k orthonormal directions used equally (an exact design: +-1 along each, every row's sign pattern)
    k = 3
    basis = torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))[0]
    signs = torch.tensor([[(i >> j & 1) * 2 - 1 for j in range(k)] for i in range(2 ** k)], dtype=torch.float64)
    assert effective_rank(5.0 + signs @ basis.T) == pytest.approx(k, rel=1e-5)
    line = torch.randn(rows, 1, generator=g) * torch.randn(1, dim, generator=g) + 3.0
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.full((rows, dim), 2.5)) == 0.0
