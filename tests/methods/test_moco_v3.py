"""MoCo v3 on real CIFAR-10 images: the symmetric InfoNCE (fused op) against its formula, the momentum schedule,
learning, resume, shapes, and gradients (the momentum encoder and the frozen patch embedding receive none)."""

import math

import pytest
import torch

from fastssl.methods import METHODS
from tests.conftest import assert_error_within
from tests.methods.image_ssl_runs import (
    assert_gradients,
    assert_resume_is_exact,
    build_small,
    real_views,
    run_and_check_loss_falls,
)


def _contrastive(q, k, tau):
    """2 tau * mean_i [log sum_j exp(q_i . k_j / tau) - q_i . k_i / tau] of l2-normalised rows, written out."""
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    logits = q @ k.T / tau
    return 2 * tau * (torch.logsumexp(logits, dim=1) - torch.diagonal(logits)).mean()


@pytest.mark.parametrize("n, dim", [(1, 3), (17, 13), (130, 64)])
def test_loss_matches_the_formula(n, dim):
    g = torch.Generator().manual_seed(n)
    q0, q1, k0, k1 = (torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(4))
    k0, k1 = k0 + q1, k1 + q0  # keys that resemble the other view's queries
    method = build_small("moco_v3")
    loss = method.loss(((q0.float(), q1.float()), (k0.float(), k1.float())))
    reference = _contrastive(q0, k1, 0.2) + _contrastive(q1, k0, 0.2)
    same_dtype = _contrastive(q0.float(), k1.float(), 0.2) + _contrastive(q1.float(), k0.float(), 0.2)
    assert_error_within("moco v3 loss", loss, reference, same_dtype, atol=1e-5)


def test_momentum_follows_the_cosine_schedule_and_the_key_encoder_is_an_ema():
    method = build_small("moco_v3")
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    key_before = method.key_projector[0].weight.clone()
    method.after_step(0, 100)
    assert method.momentum == pytest.approx(0.99)
    torch.testing.assert_close(method.key_projector[0].weight,
                               0.99 * key_before + 0.01 * method.projector[0].weight)
    method.after_step(50, 100)
    assert method.momentum == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    method.after_step(100, 100)
    assert method.momentum == pytest.approx(1.0)


def test_loss_is_finite_and_decreases(cifar_small, tmp_path):
    run_and_check_loss_falls(cifar_small, tmp_path, "moco_v3", steps=12, lr=1.5e-3)


def test_resume_restores_the_whole_state(cifar_small, tmp_path):
    state = assert_resume_is_exact(cifar_small, tmp_path, "moco_v3", steps=4)
    assert not torch.equal(state["key_projector.0.weight"], state["projector.0.weight"])


def test_view_and_target_shapes(cifar_small):
    method = build_small("moco_v3")
    views = real_views(cifar_small, "moco_v3", batch_size=16)
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2
    (q0, q1), (k0, k1) = method(views)
    assert all(t.shape == (16, 64) for t in (q0, q1, k0, k1))
    assert not k0.requires_grad and not k1.requires_grad


def test_gradients_skip_the_momentum_encoder_and_the_patch_embedding(cifar_small):
    method = build_small("moco_v3")
    method.loss(method(real_views(cifar_small, "moco_v3"))).backward()
    assert_gradients(method, none=("key_backbone.", "key_projector.", "backbone.patch_embed."))
    assert not any(p.requires_grad for p in method.key_backbone.parameters())
    assert not method.backbone.patch_embed.weight.requires_grad  # MoCo v3's random patch projection


def test_cpu_default_backbone_is_a_quarter_width_vit_small():
    """What `fastssl pretrain --method moco_v3` builds on a CPU for CIFAR-10: ViT-S, width 0.25, with the small
    recipe's 8 x 8 patches and 1024-wide heads; larger images keep the paper's patch 16 and 4096-wide heads."""
    method = METHODS["moco_v3"].build(None, {"width": 0.25}, {}, 3, (32, 32))
    assert method.backbone_spec()["name"] == "vit_small"
    assert method.backbone.num_features == 96 and method.backbone.patch_size == 8
    assert method.projector[0].out_features == 1024 and method.predictor[0].out_features == 1024
    assert method.temperature == 0.2 and method.momentum_base == 0.99
    assert METHODS["moco_v3"].build(None, {"width": 0.25, "patch_size": 4}, {}, 3, (32, 32)).backbone.patch_size == 4
    large = METHODS["moco_v3"].build(None, {"width": 0.25}, {}, 3, (224, 224))
    assert large.backbone.patch_size == 16 and large.projector[0].out_features == 4096


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="temperature"):
        METHODS["moco_v3"].build("vit_tiny", {"dim": 32, "depth": 1, "num_heads": 2}, {"temperature": 0.0}, 3,
                                 (32, 32))
    with pytest.raises(ValueError, match="momentum_base"):
        METHODS["moco_v3"].build("vit_tiny", {"dim": 32, "depth": 1, "num_heads": 2}, {"momentum_base": 1.5}, 3,
                                 (32, 32))
