"""VICReg on real CIFAR-10 images: the three terms against their formulas, learning, resume, shapes and gradients
(both branches are the same network: everything learns)."""

import pytest
import torch

from fastssl.methods import METHODS
from fastssl.methods.vicreg import vicreg_terms
from tests.conftest import assert_error_within
from tests.methods.image_ssl_runs import (
    assert_gradients,
    assert_resume_is_exact,
    build_small,
    real_views,
    run_and_check_loss_falls,
)


def _formula(z_a, z_b):
    """(invariance, variance, covariance) with torch.cov and torch.std (both unbiased), an explicit mask."""
    n, dim = z_a.shape
    invariance = ((z_a - z_b) ** 2).sum() / (n * dim)
    hinge = [torch.clamp(1 - torch.sqrt(torch.std(z, dim=0) ** 2 + 1e-4), min=0).mean() for z in (z_a, z_b)]
    off = ~torch.eye(dim, dtype=torch.bool)
    cov = [(torch.cov(z.T).reshape(dim, dim)[off] ** 2).sum() / dim for z in (z_a, z_b)]
    return invariance, (hinge[0] + hinge[1]) / 2, cov[0] + cov[1]


@pytest.mark.parametrize("n, dim", [(2, 1), (17, 13), (130, 65)])
def test_terms_match_the_formulas(n, dim):
    g = torch.Generator().manual_seed(n)
    # columns of mixed spread, so that the variance hinge is active for some and not for others
    z_a = torch.randn(n, dim, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, dim, dtype=torch.float64)
    z_b = z_a + 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    for got, want in zip(vicreg_terms(z_a, z_b), _formula(z_a, z_b)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    method = build_small("vicreg")
    loss = method.loss((z_a.float(), z_b.float()))
    reference = sum(c * t for c, t in zip((25, 25, 1), _formula(z_a, z_b)))
    same_dtype = sum(c * t for c, t in zip((25, 25, 1), _formula(z_a.float(), z_b.float())))
    assert_error_within("vicreg loss", loss, reference, same_dtype, atol=1e-5)
    assert set(method.logs()) == {"invariance", "variance", "covariance"}


def test_loss_is_finite_and_decreases(cifar_small, tmp_path):
    run_and_check_loss_falls(cifar_small, tmp_path, "vicreg", steps=12, lr=2.0)


def test_resume_restores_the_whole_state(cifar_small, tmp_path):
    assert_resume_is_exact(cifar_small, tmp_path, "vicreg", steps=4)


def test_view_and_target_shapes(cifar_small):
    method = build_small("vicreg")
    views = real_views(cifar_small, "vicreg", batch_size=16)
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2
    z_a, z_b = method(views)
    assert z_a.shape == z_b.shape == (16, 128)


def test_every_parameter_learns(cifar_small):
    method = build_small("vicreg")
    method.loss(method(real_views(cifar_small, "vicreg"))).backward()
    assert_gradients(method)


def test_expander_defaults_to_four_times_the_features():
    method = METHODS["vicreg"].build("resnet18", {"width": 0.125}, {}, 3, (32, 32))
    assert method.projector[0].out_features == method.projector[-1].out_features == 4 * 64  # 8192 for ResNet-50
    assert method.coefficients == (25.0, 25.0, 1.0)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="std_coeff"):
        METHODS["vicreg"].build("resnet18", {"width": 0.125}, {"std_coeff": -1.0}, 3, (32, 32))
    with pytest.raises(ValueError, match="proj_hidden_dim"):
        METHODS["vicreg"].build("resnet18", {"width": 0.125}, {"proj_hidden_dim": -4}, 3, (32, 32))
