"""SimSiam on real CIFAR-10 images: the negative-cosine loss against its formula, learning, resume, shapes and the
stop-gradient."""

import pytest
import torch

from fastssl.methods import METHODS
from fastssl.methods.simsiam import negative_cosine
from tests.conftest import assert_error_within
from tests.methods.image_ssl_runs import (
    assert_gradients,
    assert_resume_is_exact,
    build_small,
    real_views,
    run_and_check_loss_falls,
)


def _formula(p, z):
    """-(1/N) sum_i <p_i, z_i> / (||p_i|| ||z_i||), written out."""
    dots = (p * z).sum(dim=1)
    return -(dots / (p.pow(2).sum(dim=1).sqrt() * z.pow(2).sum(dim=1).sqrt())).mean()


@pytest.mark.parametrize("n, dim", [(1, 3), (7, 17), (130, 33)])
def test_loss_matches_the_formula(n, dim):
    g = torch.Generator().manual_seed(n)
    p0, p1, z0, z1 = (torch.randn(n, dim, generator=g, dtype=torch.float64) * 3 + 0.5 for _ in range(4))
    torch.testing.assert_close(negative_cosine(p0, z0), _formula(p0, z0), rtol=1e-12, atol=1e-12)
    method = build_small("simsiam")
    loss = method.loss(((p0.float(), p1.float()), (z0.float(), z1.float())))
    reference = (_formula(p0, z1) + _formula(p1, z0)) / 2
    same_dtype = (_formula(p0.float(), z1.float()) + _formula(p1.float(), z0.float())) / 2
    assert_error_within("simsiam loss", loss, reference, same_dtype, atol=1e-6)


def test_loss_is_finite_and_decreases(cifar_small, tmp_path):
    run_and_check_loss_falls(cifar_small, tmp_path, "simsiam", steps=12, lr=8.0)  # SGD at lr 1.0 for batch 32


def test_resume_restores_the_whole_state(cifar_small, tmp_path):
    state = assert_resume_is_exact(cifar_small, tmp_path, "simsiam", steps=4)
    assert "projector.7.running_var" in state  # the output BN (no affine parameters) keeps statistics too


def test_view_and_target_shapes(cifar_small):
    method = build_small("simsiam")
    views = real_views(cifar_small, "simsiam", batch_size=16)
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2
    (p0, p1), (z0, z1) = method(views)
    assert all(t.shape == (16, 128) for t in (p0, p1, z0, z1))


def test_gradients_stop_at_the_targets(cifar_small):
    """Every parameter learns (both views pass the same encoder), but only through the predictions: the targets z
    are detached, so the gradient equals that of the loss with z replaced by constants."""
    method = build_small("simsiam")
    (p0, p1), (z0, z1) = outputs = method(real_views(cifar_small, "simsiam"))
    assert not z0.requires_grad and not z1.requires_grad
    method.loss(outputs).backward()
    assert_gradients(method)
    grads = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()
    (p0, p1), _ = method(real_views(cifar_small, "simsiam"))
    ((_formula(p0, z1.clone()) + _formula(p1, z0.clone())) / 2).backward()
    for name, p in method.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)
    method.zero_grad()
    views = real_views(cifar_small, "simsiam")
    z = [method.projector(method.backbone(v)) for v in views]
    ((_formula(method.predictor(z[0]), z[1]) + _formula(method.predictor(z[1]), z[0])) / 2).backward()
    without_stop = method.projector[0].weight.grad
    assert not torch.allclose(without_stop, grads["projector.0.weight"])  # the check above has teeth


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="pred_hidden_dim"):
        METHODS["simsiam"].build("resnet18", {"width": 0.125}, {"pred_hidden_dim": 0}, 3, (32, 32))
    with pytest.raises(ValueError, match="temperature"):
        METHODS["simsiam"].build("resnet18", {"width": 0.125}, {"temperature": 0.1}, 3, (32, 32))
