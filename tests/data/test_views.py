"""fastssl.data view pipelines: the parameter sampler's distributions, the presets, reproducibility."""

import math

import pytest
import torch

from fastssl.data import PRESETS, ViewPipeline, ViewSpec, random_resized_crop, to_device, view_pipeline
from fastssl.data.views import sample_view_params
from fastssl.ops.augment import AugmentParams, PackedImages, augment


def _ks_uniform(samples: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance between the samples and U(low, high)."""
    x = ((samples.double() - low) / (high - low)).sort().values
    n = x.numel()
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    ecdf_lo = torch.arange(0, n, dtype=torch.float64) / n
    return max((ecdf_hi - x).max().item(), (x - ecdf_lo).max().item())


def _binomial_ok(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def test_crop_scale_and_log_ratio_are_uniform():
    """Where every first attempt fits, area/(H*W) ~ U(scale) and log(w/h) ~ U(log ratio) (KS test, fixed seed)."""
    n = 20000
    g = torch.Generator().manual_seed(0)
    heights = torch.full((n,), 1000)
    widths = torch.full((n,), 1000)
    boxes = random_resized_crop(heights, widths, (0.08, 0.5), (3 / 4, 4 / 3), g)
    area = (boxes[:, 2] * boxes[:, 3]).double() / 1e6
    log_ratio = torch.log(boxes[:, 3].double() / boxes[:, 2].double())
    # KS critical value at alpha = 0.001 is 1.95 / sqrt(n); rounding the box to whole pixels adds ~1e-3.
    bound = 1.95 / math.sqrt(n) + 2e-3
    assert _ks_uniform(area, 0.08, 0.5) < bound
    assert _ks_uniform(log_ratio, math.log(3 / 4), math.log(4 / 3)) < bound
    assert area.min() >= 0.08 - 2e-3 and area.max() <= 0.5 + 2e-3


def test_crop_boxes_always_fit_and_fall_back_like_torchvision():
    g = torch.Generator().manual_seed(1)
    heights = torch.tensor([1, 2, 40, 256, 375, 7])
    widths = torch.tensor([1, 40, 2, 256, 500, 7])
    for _ in range(50):
        boxes = random_resized_crop(heights, widths, (0.08, 1.0), (3 / 4, 4 / 3), g)
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= heights).all() and (left + w <= widths).all()
    # A 1x40 strip never fits a box of aspect in [3/4, 4/3] and area >= 8% (h would round to 2): torchvision
    # falls back to the centred box with the ratio clamped: h = 1, w = round(1 * 4/3) = 1, left = (40 - 1) // 2.
    boxes = random_resized_crop(torch.tensor([1]), torch.tensor([40]), (0.08, 1.0), (3 / 4, 4 / 3), g)
    assert boxes.tolist() == [[0, 19, 1, 1]]
    assert random_resized_crop(heights[:1], widths[:1], (0.08, 1.0), (3 / 4, 4 / 3), g).tolist() == [[0, 0, 1, 1]]


def test_application_rates_and_factor_ranges():
    n = 20000
    g = torch.Generator().manual_seed(2)
    spec = ViewSpec(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.3, solarize_p=0.1, brightness=0.4,
                    contrast=0.3, saturation=0.2, hue=0.1, blur_sigma=(0.1, 2.0))
    p = sample_view_params(spec, torch.full((n,), 64), torch.full((n,), 48), g)
    for flag, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.grayscale, 0.2), (p.blur_sigma > 0, 0.3),
                       (p.solarize, 0.1)):
        assert _binomial_ok(int(flag.sum()), n, prob)
    bound = 1.95 / math.sqrt(n)
    assert _ks_uniform(p.brightness, 0.6, 1.4) < bound
    assert _ks_uniform(p.contrast, 0.7, 1.3) < bound
    assert _ks_uniform(p.saturation, 0.8, 1.2) < bound
    assert _ks_uniform(p.hue, -0.1, 0.1) < bound
    assert _ks_uniform(p.blur_sigma[p.blur_sigma > 0], 0.1, 2.0) < 1.95 / math.sqrt(int((p.blur_sigma > 0).sum()))
    # every row of jitter_order is a permutation, and the 24 permutations are equally likely (chi-square, 23 dof)
    assert (p.jitter_order.sort(1).values == torch.arange(4)).all()
    codes = (p.jitter_order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1].double()
    assert counts.numel() == 24
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum().item()
    assert chi2 < 60  # p < 1e-4 for 23 degrees of freedom


def test_kernel_size_follows_the_view_size():
    assert ViewSpec(size=224).kernel_size() == 23
    assert ViewSpec(size=96).kernel_size() == 9
    assert ViewSpec(size=32).kernel_size() == 3
    assert ViewSpec(size=224, blur_size=5).kernel_size() == 5


def test_seed_reproduces_parameters_and_views():
    images = torch.randint(0, 256, (3, 40, 50, 3), dtype=torch.uint8)
    pipe = view_pipeline("simclr", size=24)
    a = pipe(images, generator=torch.Generator().manual_seed(5), backend="reference")
    b = pipe(images, generator=torch.Generator().manual_seed(5), backend="reference")
    c = pipe(images, generator=torch.Generator().manual_seed(6), backend="reference")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two views differ


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_shapes(preset):
    images = torch.randint(0, 256, (2, 50, 60, 3), dtype=torch.uint8)
    multi_crop = preset in ("dino", "dino_small")
    pipe = view_pipeline(preset, size=20, **({"local_size": 12} if multi_crop else {}))
    views = pipe(images, generator=torch.Generator().manual_seed(0), backend="reference")
    expected = {"simclr": 2, "moco_v2": 2, "byol": 2, "dino": 10, "dino_small": 8, "mae": 1, "cifar": 2}[preset]
    assert len(views) == expected
    assert views[0].shape == (2, 3, 20, 20)
    if multi_crop:
        assert all(v.shape == (2, 3, 12, 12) for v in views[2:])


def test_byol_and_dino_are_asymmetric():
    n = 4000
    images = PackedImages.from_list([torch.zeros(8, 8, 3, dtype=torch.uint8)] * n)
    g = torch.Generator().manual_seed(3)
    first, second = view_pipeline("byol").sample_params(images, g)
    assert bool((first.blur_sigma > 0).all()) and not bool(first.solarize.any())
    assert _binomial_ok(int((second.blur_sigma > 0).sum()), n, 0.1)
    assert _binomial_ok(int(second.solarize.sum()), n, 0.2)
    dino = view_pipeline("dino", local_crops=3)
    assert [v.output_size() for v in dino.views] == [(224, 224)] * 2 + [(96, 96)] * 3
    assert dino.views[2].scale == (0.05, 0.4) and dino.views[0].scale == (0.4, 1.0)


def test_pipeline_equals_one_augment_call_per_view():
    """Views of one size share a launch; the result equals augmenting each view on its own."""
    images = torch.randint(0, 256, (3, 30, 20, 3), dtype=torch.uint8)
    pipe = view_pipeline("dino", size=16, local_size=8, local_crops=2)
    params = pipe.sample_params(images, torch.Generator().manual_seed(4))
    views = pipe(images, params=params, backend="reference")
    for view, spec, p in zip(views, pipe.views, params):
        alone = augment(images, p, spec.output_size(), pipe.mean, pipe.std, backend="reference")
        torch.testing.assert_close(view, alone, atol=0, rtol=0)


def test_single_channel_images_use_luma_statistics():
    images = torch.randint(0, 256, (2, 28, 28, 1), dtype=torch.uint8)
    pipe = view_pipeline("cifar")
    views = pipe(images, generator=torch.Generator().manual_seed(0), backend="reference")
    assert views[0].shape == (2, 1, 32, 32)
    mean, std = pipe.normalization(1)
    assert len(mean) == 1 and abs(mean[0] - (0.2989 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)) < 1e-12


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="preset: unknown 'simclr2'"):
        view_pipeline("simclr2")
    with pytest.raises(ValueError, match="sizes: not an option"):
        view_pipeline("simclr", sizes=3)
    with pytest.raises(ValueError, match="views\\[0\\].scale"):
        view_pipeline("mae", scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="views\\[1\\].flip_p"):
        ViewPipeline([ViewSpec(), ViewSpec(flip_p=1.5)])
    with pytest.raises(ValueError, match="params: expected 2"):
        view_pipeline("cifar")(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), params=[AugmentParams.identity(1, 8, 8)])


def test_to_device_is_identity_on_cpu():
    images = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    assert to_device(images, "cpu") is images
