"""The VAE on real CIFAR-10 and MNIST slices: it trains and resumes exactly under the Trainer (the
reparameterisation noise included), its loss is the negative ELBO (checked against torch.distributions in float64),
gradients reach encoder, both heads and the decoder through the reparameterisation, and it writes its
reconstruction and sample grids."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Normal, kl_divergence

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from fastssl.methods.vae import gaussian_kl
from tests.methods.trainer_runs import (
    assert_every_parameter_learns,
    assert_loss_decreases,
    assert_resume_is_exact,
    straight_run,
)

METHOD = "vae"
STEPS = 12
LR = 2e-2  # AdamW at batch 16: 2e-2 x 16 / 256 = 1.25e-3


@pytest.fixture(scope="module")
def straight(cifar_small, tmp_path_factory):
    return straight_run(cifar_small, tmp_path_factory.mktemp(METHOD) / "straight", METHOD, STEPS, lr=LR,
                        method_args={"latent_dim": 16})


def build(channels=3, size=(32, 32), **method_args):
    torch.manual_seed(0)
    return METHODS[METHOD].build("resnet18", {"width": 0.125}, {"latent_dim": 16, **method_args}, channels, size)


def real_view(path, count: int = 8) -> torch.Tensor:
    with np.load(path) as f:
        images = torch.from_numpy(f["x"][:count])
    pipe = view_pipeline(METHODS[METHOD].small_preset, size=tuple(images.shape[1:3]))
    (view,) = pipe(images, generator=torch.Generator().manual_seed(0))
    return view


def test_loss_is_finite_and_decreases_and_the_grids_are_written(straight):
    assert_loss_decreases(straight)
    assert "views mae (32, 32)" in (straight / "printed.txt").read_text()
    printed = (straight / "printed.txt").read_text()
    for name in ("reconstructions.png", "samples.png"):
        assert f"saved {straight / name}" in printed
        assert Image.open(straight / name).format == "PNG"
    header = (straight / "metrics.csv").read_text().splitlines()[0]
    assert "reconstruction" in header and "kl" in header


def test_resume_restores_the_whole_state(cifar_small, straight, tmp_path):
    assert_resume_is_exact(cifar_small, straight, tmp_path / "resumed", METHOD, STEPS, lr=LR,
                           method_args={"latent_dim": 16})


@pytest.mark.parametrize("data", ["cifar_small", "mnist_small"])
def test_view_posterior_and_reconstruction_shapes(data, request):
    view = real_view(request.getfixturevalue(data))
    method = build(view.shape[1], tuple(view.shape[2:]))
    recon, target, mu, logvar = method([view])
    assert recon.shape == target.shape == view.shape
    assert mu.shape == logvar.shape == (view.shape[0], 16)
    assert torch.equal(target, view) and not target.requires_grad


def test_kl_matches_torch_distributions_in_float64():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_loss_is_the_negative_elbo_in_float64(beta):
    method = build(size=(5, 3), beta=beta)
    g = torch.Generator().manual_seed(2)
    recon, view = torch.randn(3, 3, 5, 3, generator=g), torch.randn(3, 3, 5, 3, generator=g)
    mu, logvar = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g) * 0.5
    r64, v64, m64, l64 = (t.double().numpy() for t in (recon, view, mu, logvar))
    reconstruction = ((r64 - v64) ** 2).reshape(3, -1).sum(axis=1).mean()
    kl = (0.5 * (m64 ** 2 + np.exp(l64) - 1 - l64)).sum(axis=1).mean()
    loss = method.loss((recon, view, mu, logvar)).item()
    assert abs(loss - (reconstruction + beta * kl)) < 1e-5 * loss
    logs = method.logs()
    assert abs(logs["reconstruction"] - reconstruction) < 1e-5 * reconstruction
    assert abs(logs["kl"] - kl) < 1e-5 * kl


def test_reparameterisation_samples_around_mu():
    method = build()
    view = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    recon_a = method([view])[0]
    torch.manual_seed(1)
    recon_b = method([view])[0]
    torch.manual_seed(2)
    recon_c = method([view])[0]
    assert torch.equal(recon_a, recon_b) and not torch.equal(recon_a, recon_c)  # eps comes from the global RNG


def test_gradients_reach_encoder_heads_and_decoder_not_the_target(cifar_small):
    view = real_view(cifar_small).requires_grad_(True)
    method = build()
    outputs = method([view])
    assert outputs[1].grad_fn is None
    method.loss(outputs).backward()
    assert_every_parameter_learns(method)  # logvar_head too: only through the reparameterisation and the KL


def test_save_artifacts_writes_reconstructions_and_samples(cifar_small, tmp_path):
    view = real_view(cifar_small, count=20)
    method = build()
    paths = method.save_artifacts(tmp_path, [view])
    assert [p.name for p in paths] == ["reconstructions.png", "samples.png"]
    assert method.training  # the train/eval flag is restored
    cell = 2 * 32 + 2
    assert Image.open(paths[0]).size == (8 * cell + 2, 4 * cell + 2)  # 16 of the 20 views: 2 rows, 2 of recons
    assert Image.open(paths[1]).size == (8 * cell + 2, 4 * cell + 2)  # 32 samples


@pytest.mark.parametrize("args, name", [({"latent_dim": 0}, "latent_dim"), ({"beta": -1.0}, "beta")])
def test_bad_arguments_name_themselves(args, name):
    with pytest.raises(ValueError, match=name):
        build(**args)


def test_image_grid_places_each_image_and_pads_with_white(tmp_path):
    from fastssl.eval.plots import save_image_grid

    images = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 0.5, 1.0)])  # three flat grey levels
    save_image_grid(tmp_path / "g.png", images, columns=2, padding=1, scale=2)
    pixels = np.asarray(Image.open(tmp_path / "g.png"))
    assert pixels.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3)
    assert (pixels[1:5, 1:7] == 0).all() and (pixels[1:5, 8:14] == 128).all() and (pixels[6:10, 1:7] == 255).all()
    assert (pixels[0] == 255).all() and (pixels[6:10, 8:14] == 255).all()  # padding and the empty cell
    with pytest.raises(ValueError, match="images"):
        save_image_grid(tmp_path / "bad.png", torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="columns"):
        save_image_grid(tmp_path / "bad.png", torch.zeros(2, 3, 4, 4), columns=0)
