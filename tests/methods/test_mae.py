"""MAE on real CIFAR-10 and MNIST slices: it trains and resumes exactly under the Trainer (the step-seeded masks
included), its masks split the patches 25 / 75, its targets are the per-patch normalised pixels of exactly the
masked patches and its loss is the paper's (both checked against plain float64 formulas), gradients reach the
encoder only through the visible pixels, and every weight of encoder and decoder learns."""

import numpy as np
import pytest
import torch

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from fastssl.ops import random_masking
from tests.methods.trainer_runs import (
    TINY_VIT,
    assert_every_parameter_learns,
    assert_loss_decreases,
    assert_resume_is_exact,
    straight_run,
)

METHOD = "mae"
STEPS = 12
RUN = dict(TINY_VIT, lr=4e-2, method_args={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2})


@pytest.fixture(scope="module")
def straight(cifar_small, tmp_path_factory):
    return straight_run(cifar_small, tmp_path_factory.mktemp(METHOD) / "straight", METHOD, STEPS, **RUN)


def build(channels=3, size=(32, 32), **method_args):
    torch.manual_seed(0)
    args = {**RUN["method_args"], **method_args}
    return METHODS[METHOD].build("vit_tiny", TINY_VIT["backbone_args"], args, channels, size)


def real_view(path, count: int = 8) -> torch.Tensor:
    with np.load(path) as f:
        images = torch.from_numpy(f["x"][:count])
    pipe = view_pipeline(METHODS[METHOD].small_preset, size=tuple(images.shape[1:3]))
    views = pipe(images, generator=torch.Generator().manual_seed(0))
    assert len(views) == 1  # MAE's one view: crop and flip
    return views[0]


def patchify64(view: torch.Tensor, p: int) -> np.ndarray:
    """MAE's patchify in numpy float64: (B, C, H, W) -> (B, L, p*p*C), element (i, j, c) at i*p*C + j*C + c."""
    x = view.detach().double().numpy()
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def test_loss_is_finite_and_decreases(straight):
    assert_loss_decreases(straight)
    assert "views mae (32, 32)" in (straight / "printed.txt").read_text()


def test_resume_restores_the_whole_state(cifar_small, straight, tmp_path):
    assert_resume_is_exact(cifar_small, straight, tmp_path / "resumed", METHOD, STEPS, **RUN)


@pytest.mark.parametrize("data, patches, kept, values", [("cifar_small", 64, 16, 48), ("mnist_small", 49, 12, 16)])
def test_view_prediction_and_target_shapes(data, patches, kept, values, request):
    view = real_view(request.getfixturevalue(data))
    method = build(view.shape[1], tuple(view.shape[2:]))
    assert method.backbone.num_patches == patches
    ids_keep, ids_masked, ids_restore = method.masking(8, step=0, device=view.device)
    assert ids_keep.shape == (8, kept) and ids_masked.shape == (8, patches - kept)
    assert ids_restore.shape == (8, patches)
    pred, target = method([view])
    assert pred.shape == target.shape == (8, patches - kept, values)
    assert method.backbone(view).shape == (8, method.backbone.num_features)  # mean-pooled, for kNN


def test_masks_partition_the_patches_and_follow_the_step():
    method = build()
    ids_keep, ids_masked, ids_restore = method.masking(6, step=3, device="cpu")
    every = torch.cat([ids_keep, ids_masked], dim=1).sort(dim=1).values
    assert torch.equal(every, torch.arange(64).expand(6, -1))
    # Consistent with random_masking's own outputs: the masked patches are those restored past the kept ones.
    assert torch.equal((ids_restore >= 16).sum(dim=1), torch.full((6,), 48))
    assert (ids_restore.gather(1, ids_masked) >= 16).all() and (ids_restore.gather(1, ids_keep) < 16).all()
    assert torch.equal(method.masking(6, 3, "cpu")[0], ids_keep)
    assert not torch.equal(method.masking(6, 4, "cpu")[0], ids_keep)
    assert not torch.equal(ids_keep[0], ids_keep[1])
    other = build()
    other.set_extra_state({"mask_seed": method.mask_seed + 1})
    assert not torch.equal(other.masking(6, 3, "cpu")[0], ids_keep)
    other.load_state_dict(method.state_dict())  # the seed travels in the checkpoint (extra state)
    assert torch.equal(other.masking(6, 3, "cpu")[0], ids_keep)


def test_targets_are_the_normalised_pixels_of_the_masked_patches_in_float64(cifar_small):
    view = real_view(cifar_small)
    method = build()
    _, ids_masked, _ = method.masking(8, step=0, device="cpu")
    _, target = method([view], step=0)
    patches = np.take_along_axis(patchify64(view, 4), ids_masked.numpy()[:, :, None], axis=1)
    mean, var = patches.mean(axis=-1, keepdims=True), patches.var(axis=-1, ddof=1, keepdims=True)
    np.testing.assert_allclose(target.double().numpy(), (patches - mean) / np.sqrt(var + 1e-6), atol=1e-4)
    raw = build(norm_pix_loss=False)
    np.testing.assert_allclose(raw([view], step=0)[1].double().numpy(), patches, atol=1e-6)


def test_loss_is_the_papers_masked_mean_in_float64():
    """MAE's forward_loss: per-patch mean squared error over ALL patches, weighted by the mask, divided by the
    mask's sum, on predictions scattered back to their patch positions."""
    method = build(size=(12, 20))  # 3 x 5 = 15 patches of 4 x 4 x 3, 3 kept
    g = torch.Generator().manual_seed(5)
    batch, length, values = 3, 15, 48
    ids_keep, mask, ids_restore = random_masking(batch, length, 0.75, generator=g)
    ids_masked = torch.stack([row.nonzero().flatten() for row in mask])  # (B, 12)
    pred_masked = torch.randn(batch, 12, values, generator=g)
    target_all = torch.randn(batch, length, values, generator=g)
    target_masked = target_all.gather(1, ids_masked[:, :, None].expand(-1, -1, values))
    pred_all = torch.randn(batch, length, values, generator=g).double()  # visible predictions: ignored
    pred_all.scatter_(1, ids_masked[:, :, None].expand(-1, -1, values), pred_masked.double())
    per_patch = ((pred_all - target_all.double()) ** 2).mean(dim=-1)
    expected = (per_patch * mask.double()).sum() / mask.double().sum()
    assert abs(method.loss((pred_masked, target_masked)).item() - expected.item()) < 1e-6 * expected.item()


def test_gradients_reach_every_weight_and_only_the_visible_pixels(cifar_small):
    view = real_view(cifar_small).requires_grad_(True)
    method = build()
    pred, target = method([view], step=2)
    assert target.grad_fn is None  # the target is a constant
    method.loss((pred, target)).backward()
    assert_every_parameter_learns(method)  # encoder, mask token, decoder
    ids_keep, _, _ = method.masking(8, step=2, device="cpu")
    visible = torch.zeros(8, 64, dtype=torch.bool).scatter_(1, ids_keep, True)
    visible_pixels = visible.reshape(8, 1, 8, 1, 8, 1).expand(-1, 3, -1, 4, -1, 4).reshape(8, 3, 32, 32)
    assert view.grad[~visible_pixels].abs().max() == 0  # the encoder never saw the masked patches
    assert (view.grad.abs().reshape(8, 3, 8, 4, 8, 4).sum(dim=(1, 3, 5)).flatten(1)[visible] > 0).all()


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="backbone"):
        METHODS[METHOD].build("resnet18", {"width": 0.125}, {}, 3, (32, 32))
    with pytest.raises(ValueError, match="mask_ratio"):
        build(mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        build(mask_ratio=0.99)  # int(64 * 0.01) = 0 patches visible
    with pytest.raises(ValueError, match="mask_ratio"):
        build(mask_ratio=1e-17)  # 1 - 1e-17 rounds to 1: all 64 visible, none to predict
    with pytest.raises(ValueError, match="decoder_dim"):
        build(decoder_dim=30)
