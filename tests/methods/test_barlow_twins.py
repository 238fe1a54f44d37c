"""Barlow Twins on real CIFAR-10 images: the cross-correlation loss against its formula, learning, resume, shapes
and gradients (both branches are the same network: everything learns)."""

import pytest
import torch

from fastssl.methods import METHODS
from fastssl.methods.barlow_twins import barlow_twins_loss, cross_correlation
from tests.conftest import assert_error_within
from tests.methods.image_ssl_runs import (
    assert_gradients,
    assert_resume_is_exact,
    build_small,
    real_views,
    run_and_check_loss_falls,
)


def _standardise(z, eps=1e-5):
    """Each column over the batch with the biased variance, as BatchNorm in training mode."""
    return (z - z.mean(0)) / torch.sqrt(((z - z.mean(0)) ** 2).mean(0) + eps)


def _formula(z_a, z_b, lambd):
    """C_ij = sum_n a_ni b_nj / N of the standardised embeddings, then sum_i (1 - C_ii)^2 + lambd sum_{i != j}
    C_ij^2 with an explicit off-diagonal mask."""
    n, dim = z_a.shape
    c = torch.einsum("ni,nj->ij", _standardise(z_a), _standardise(z_b)) / n
    off = ~torch.eye(dim, dtype=torch.bool)
    return ((1 - torch.diagonal(c)) ** 2).sum() + lambd * (c[off] ** 2).sum()


@pytest.mark.parametrize("n, dim", [(3, 1), (17, 13), (130, 65)])
def test_loss_matches_the_formula(n, dim):
    g = torch.Generator().manual_seed(n)
    z_a = torch.randn(n, dim, generator=g, dtype=torch.float64) * 2 + 1
    z_b = z_a + torch.randn(n, dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(barlow_twins_loss(cross_correlation(_standardise(z_a), _standardise(z_b)), 0.3),
                               _formula(z_a, z_b, 0.3), rtol=1e-10, atol=1e-10)
    method = build_small("barlow_twins")
    method.standardize = torch.nn.BatchNorm1d(dim, affine=False)
    loss = method.loss((z_a.float(), z_b.float()))
    assert_error_within("barlow twins loss", loss, _formula(z_a, z_b, 0.0051),
                        _formula(z_a.float(), z_b.float(), 0.0051), atol=1e-5)


def test_loss_is_finite_and_decreases(cifar_small, tmp_path):
    run_and_check_loss_falls(cifar_small, tmp_path, "barlow_twins", steps=12, lr=2.0)


def test_resume_restores_the_whole_state(cifar_small, tmp_path):
    state = assert_resume_is_exact(cifar_small, tmp_path, "barlow_twins", steps=4)
    assert state["standardize.num_batches_tracked"] > 0


def test_view_and_target_shapes(cifar_small):
    method = build_small("barlow_twins")
    views = real_views(cifar_small, "barlow_twins", batch_size=16)
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2
    z_a, z_b = method(views)
    assert z_a.shape == z_b.shape == (16, 128)


def test_every_parameter_learns(cifar_small):
    method = build_small("barlow_twins")
    method.loss(method(real_views(cifar_small, "barlow_twins"))).backward()
    assert_gradients(method)


def test_projector_defaults_to_four_times_the_features():
    method = METHODS["barlow_twins"].build("resnet18", {"width": 0.125}, {}, 3, (32, 32))
    assert method.projector[0].out_features == method.projector[-1].out_features == 4 * 64  # 8192 for ResNet-50
    assert method.lambd == 0.0051


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="lambd"):
        METHODS["barlow_twins"].build("resnet18", {"width": 0.125}, {"lambd": -1.0}, 3, (32, 32))
    with pytest.raises(ValueError, match="proj_dim"):
        METHODS["barlow_twins"].build("resnet18", {"width": 0.125}, {"proj_dim": 2.5}, 3, (32, 32))
