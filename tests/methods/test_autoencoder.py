"""The autoencoder on real CIFAR-10 and MNIST slices: it trains and resumes exactly under the Trainer, its decoder
redraws views of any shape, its loss is the mean squared error, and every weight learns while the target is a
constant."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from fastssl.methods.autoencoder import ConvDecoder, display_range, interleave_rows
from fastssl.train import Trainer
from tests.methods.trainer_runs import (
    assert_every_parameter_learns,
    assert_loss_decreases,
    assert_resume_is_exact,
    straight_run,
    tiny_config,
)

METHOD = "autoencoder"
STEPS = 12
LR = 2e-2  # AdamW at batch 16: 2e-2 x 16 / 256 = 1.25e-3


@pytest.fixture(scope="module")
def straight(cifar_small, tmp_path_factory):
    return straight_run(cifar_small, tmp_path_factory.mktemp(METHOD) / "straight", METHOD, STEPS, lr=LR)


def real_views(path, count: int = 8):
    """The method's one-view pipeline (the "mae" preset at the data's size) on real images."""
    with np.load(path) as f:
        images = torch.from_numpy(f["x"][:count])
    size = tuple(images.shape[1:3])
    pipe = view_pipeline(METHODS[METHOD].small_preset, size=size)
    return pipe(images, generator=torch.Generator().manual_seed(0)), images.shape[-1], size


def test_loss_is_finite_and_decreases(straight):
    assert_loss_decreases(straight)
    assert "views mae (32, 32)" in (straight / "printed.txt").read_text()
    assert (straight / "reconstructions.png").exists()


def test_resume_restores_the_whole_state(cifar_small, straight, tmp_path):
    assert_resume_is_exact(cifar_small, straight, tmp_path / "resumed", METHOD, STEPS, lr=LR)


def test_trains_on_single_channel_mnist(mnist_small, tmp_path):
    summary = Trainer(tiny_config(mnist_small, tmp_path, METHOD, max_steps=2)).run()
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    grid = Image.open(tmp_path / "reconstructions.png")
    # batch 16: 2 rows of 8 views, each over its row of reconstructions, drawn at twice the size
    assert grid.size == (8 * (2 * 28 + 2) + 2, 4 * (2 * 28 + 2) + 2)


@pytest.mark.parametrize("data", ["cifar_small", "mnist_small"])
def test_view_reconstruction_and_target_shapes(data, request):
    views, channels, size = real_views(request.getfixturevalue(data))
    assert len(views) == 1 and views[0].shape == (8, channels, *size)
    torch.manual_seed(0)
    method = METHODS[METHOD].build("resnet18", {"width": 0.125}, {}, channels, size)
    recon, target = method(views)
    assert recon.shape == target.shape == (8, channels, *size)
    assert torch.equal(target, views[0]) and not target.requires_grad
    assert method.backbone(views[0]).shape == (8, method.backbone.num_features)


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (17, 45), (224, 160)])
def test_decoder_draws_the_exact_size(size):
    decoder = ConvDecoder(24, 3, size, width=4)
    assert decoder(torch.randn(3, 24)).shape == (3, 3, *size)
    assert decoder.grid[0] <= 4 and decoder.grid[1] <= 4  # the Linear layer stays small at any size


def test_gradients_reach_encoder_and_decoder_not_the_target(cifar_small):
    views, channels, size = real_views(cifar_small)
    torch.manual_seed(0)
    method = METHODS[METHOD].build("resnet18", {"width": 0.125}, {}, channels, size)
    view = views[0].clone().requires_grad_(True)
    recon, target = method([view])
    assert target.grad_fn is None  # the view as target is a constant
    method.loss((recon, target)).backward()
    assert_every_parameter_learns(method)
    # The view's gradient is its gradient as the ENCODER'S INPUT only.
    view_as_input = views[0].clone().requires_grad_(True)
    method.zero_grad()
    (input_grad,) = torch.autograd.grad(method.loss((method.decoder(method.backbone(view_as_input)), views[0])),
                                        view_as_input)
    torch.testing.assert_close(view.grad, input_grad, rtol=0, atol=0)


def test_loss_is_the_mean_squared_error_in_float64():
    g = torch.Generator().manual_seed(3)
    recon, target = torch.randn(3, 2, 5, 7, generator=g), torch.randn(3, 2, 5, 7, generator=g)
    method = METHODS[METHOD].build("resnet18", {"width": 0.125}, {}, 2, (5, 7))
    expected = ((recon.double().numpy() - target.double().numpy()) ** 2).sum() / recon.numel()
    assert abs(method.loss((recon, target)).item() - expected) < 1e-6 * expected


def test_display_helpers():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(6, 3, 4, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5])[:, None, None] + 1
    shown = display_range(reference, reference)
    for c in range(3):
        assert shown[:, c].min() == 0 and abs(shown[:, c].max().item() - 1) < 1e-6
    a, b = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    rows = interleave_rows([a, b], columns=2)  # a a / b b / a a / b b
    assert rows[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="decoder_width"):
        ConvDecoder(8, 3, (32, 32), width=0)
    with pytest.raises(ValueError, match="method_args"):
        METHODS[METHOD].build("resnet18", {"width": 0.125}, {"latent_dim": 3}, 3, (32, 32))
