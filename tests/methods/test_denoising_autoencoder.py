"""The denoising autoencoder on real CIFAR-10 and MNIST slices: it trains and resumes exactly (the step-seeded
corruption included), its masking noise drops exactly the chosen patches, its Gaussian noise has the chosen
spread, and it learns to redraw the clean view from what survived."""

import numpy as np
import pytest
import torch

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from tests.methods.trainer_runs import (
    assert_every_parameter_learns,
    assert_loss_decreases,
    assert_resume_is_exact,
    straight_run,
)

METHOD = "denoising_autoencoder"
STEPS = 12
LR = 2e-2  # AdamW at batch 16: 2e-2 x 16 / 256 = 1.25e-3


@pytest.fixture(scope="module")
def straight(cifar_small, tmp_path_factory):
    return straight_run(cifar_small, tmp_path_factory.mktemp(METHOD) / "straight", METHOD, STEPS, lr=LR)


def build(channels=3, size=(32, 32), **method_args):
    torch.manual_seed(0)
    return METHODS[METHOD].build("resnet18", {"width": 0.125}, method_args, channels, size)


def real_view(path, count: int = 8) -> torch.Tensor:
    with np.load(path) as f:
        images = torch.from_numpy(f["x"][:count])
    pipe = view_pipeline(METHODS[METHOD].small_preset, size=tuple(images.shape[1:3]))
    (view,) = pipe(images, generator=torch.Generator().manual_seed(0))
    return view


def test_loss_is_finite_and_decreases(straight):
    assert_loss_decreases(straight)
    assert "views mae (32, 32)" in (straight / "printed.txt").read_text()
    assert (straight / "reconstructions.png").exists()


def test_resume_restores_the_whole_state(cifar_small, straight, tmp_path):
    assert_resume_is_exact(cifar_small, straight, tmp_path / "resumed", METHOD, STEPS, lr=LR)


@pytest.mark.parametrize("data", ["cifar_small", "mnist_small"])
def test_view_corrupted_input_and_target_shapes(data, request):
    view = real_view(request.getfixturevalue(data))
    method = build(view.shape[1], tuple(view.shape[2:]))
    corrupted = method.encode_input(view, step=0)
    recon, target = method([view])
    assert corrupted.shape == recon.shape == target.shape == view.shape
    assert torch.equal(target, view) and not target.requires_grad


@pytest.mark.parametrize("size, patch_size, mask_ratio",
                         [((32, 32), 4, 0.5), ((28, 28), 4, 0.75), ((30, 17), 3, 0.3)])
def test_masking_noise_drops_whole_patches_and_exactly_the_masked_count(size, patch_size, mask_ratio):
    method = build(size=size, patch_size=patch_size, mask_ratio=mask_ratio)
    view = torch.rand(5, 3, *size) + 0.5  # never zero, so a zero marks a dropped pixel
    dropped = (method.encode_input(view, step=7) == 0)
    assert torch.equal(dropped[:, :1].expand_as(dropped), dropped)  # every channel of a pixel together
    # Each grid cell is dropped as a whole: the cell's top-left pixel, blown up to p x p, gives every pixel.
    cell_dropped = dropped[:, 0, ::patch_size, ::patch_size]
    grid_h, grid_w = cell_dropped.shape[1:]
    assert (grid_h, grid_w) == (-(-size[0] // patch_size), -(-size[1] // patch_size))
    blown_up = cell_dropped.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    assert torch.equal(blown_up[:, :size[0], :size[1]], dropped[:, 0])
    cells_total = grid_h * grid_w
    expected = cells_total - int(cells_total * (1 - mask_ratio))  # random_masking keeps int(L (1 - ratio))
    assert cell_dropped.flatten(1).sum(dim=1).tolist() == [expected] * 5
    assert not torch.equal(cell_dropped[0], cell_dropped[1])  # each image its own mask


def test_corruption_is_a_function_of_the_step_and_the_seed():
    method = build()
    view = torch.rand(4, 3, 32, 32) + 0.5
    assert torch.equal(method.encode_input(view, 3), method.encode_input(view, 3))
    assert not torch.equal(method.encode_input(view, 3), method.encode_input(view, 4))
    other = build()
    other.set_extra_state({"noise_seed": method.noise_seed + 1})
    assert not torch.equal(method.encode_input(view, 3), other.encode_input(view, 3))
    other.load_state_dict(method.state_dict())  # the seed travels in the checkpoint (extra state)
    assert torch.equal(method.encode_input(view, 3), other.encode_input(view, 3))


def test_gaussian_noise_has_the_chosen_spread():
    method = build(noise="gaussian", noise_std=0.3)
    view = torch.randn(16, 3, 32, 32)
    noise = (method.encode_input(view, step=2) - view).double()
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 0.3) < 0.01
    assert torch.equal(method.encode_input(view, 2), method.encode_input(view, 2))


def test_gradients_reach_every_weight_and_never_the_dropped_pixels(cifar_small):
    view = real_view(cifar_small).requires_grad_(True)
    method = build()
    recon, target = method([view], step=5)
    method.loss((recon, target)).backward()
    assert_every_parameter_learns(method)
    # The dropped pixels reach the loss only as the target, a constant: no gradient flows into them.
    dropped = method.encode_input(torch.ones_like(view), step=5) == 0
    assert view.grad[dropped].abs().max() == 0
    assert view.grad[~dropped].abs().sum() > 0


def test_loss_is_the_mean_squared_error_against_the_clean_view_in_float64():
    method = build(size=(5, 7), patch_size=2)
    g = torch.Generator().manual_seed(1)
    recon, view = torch.randn(3, 3, 5, 7, generator=g), torch.randn(3, 3, 5, 7, generator=g)
    expected = ((recon.double().numpy() - view.double().numpy()) ** 2).mean()
    assert abs(method.loss((recon, view)).item() - expected) < 1e-6 * expected


@pytest.mark.parametrize("args, name", [({"noise": "salt"}, "noise"), ({"mask_ratio": 1.0}, "mask_ratio"),
                                        ({"patch_size": 0}, "patch_size"), ({"noise_std": -1.0}, "noise_std")])
def test_bad_arguments_name_themselves(args, name):
    with pytest.raises(ValueError, match=name):
        build(**args)
