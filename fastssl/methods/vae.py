"""Variational autoencoder: Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014.

The encoder (the backbone, then two linear heads) gives a diagonal Gaussian posterior q(z|x) = N(mu, diag(exp
logvar)) over a ``latent_dim`` code; a sample drawn with the reparameterisation trick z = mu + exp(logvar / 2) * eps,
eps ~ N(0, I), goes through the convolutional decoder of autoencoder.py, and the loss is the negative ELBO per image:

    h = backbone(view)                                 # (batch_size, num_features): what kNN and the probe judge
    mu, logvar = mu_head(h), logvar_head(h)             # (batch_size, latent_dim) each
    recon = decoder(mu + exp(logvar / 2) * eps)         # (batch_size, C, H, W)
    loss = sum_pixels (recon - view)^2 + beta * KL(q(z|x) || N(0, I)),
    KL = -1/2 sum_latent (1 + logvar - mu^2 - exp(logvar))        (the paper's Appendix B, closed form)

The reconstruction term is the Gaussian log-likelihood with a fixed variance of 1/2 on the normalised pixels (up to
a constant); ``beta`` = 1 is the ELBO, other values give the beta-VAE of Higgins et al. (ICLR 2017). eps comes from
the global generator, which the engine seeds and restores on resume. At the end of a run, reconstructions.png
(views over their reconstructions from mu) and samples.png (decoder(z), z ~ N(0, I)) are written.

Defaults: AdamW lr 1e-3 x batch / 256 (the paper used Adagrad), weight decay 0.05, latent_dim 128, beta 1; one
crop-and-flip view (the "mae" preset); decoder width num_features / 8 as in autoencoder.py.

Measured on the project's shared 2-core CPU (CIFAR-10, kNN on 10,000 train / 2,000 test images; the random
initialisation scores 30.1%): a 2-minute run (70 steps of 256) 29.6%, an 8-minute budget (294 steps) 39.6%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fastssl.methods.autoencoder import ConvDecoder, display_range, grid_batch, interleave_rows
from fastssl.methods.base import Method


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp logvar)) || N(0, I)) per sample: (batch_size, latent_dim) -> (batch_size,)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


class VAE(Method):
    name = "vae"
    preset = "mae"
    small_preset = "mae"
    defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    options = {"latent_dim": 128, "beta": 1.0, "decoder_width": None}

    def __init__(self, backbone, backbone_spec, latent_dim: int, beta: float, decoder_width: Optional[int], **base):
        super().__init__(backbone, backbone_spec, **base)
        if int(latent_dim) != latent_dim or latent_dim < 1:
            raise ValueError(f"latent_dim: must be a positive integer, got {latent_dim!r}")
        if beta < 0:
            raise ValueError(f"beta: must be >= 0, got {beta!r}")
        self.latent_dim, self.beta = int(latent_dim), float(beta)
        self.decoder_width = decoder_width or max(1, backbone.num_features // 8)
        self.mu_head = nn.Linear(backbone.num_features, self.latent_dim)
        self.logvar_head = nn.Linear(backbone.num_features, self.latent_dim)
        self.decoder: Optional[ConvDecoder] = None  # built by build(), which knows the views' shape
        self._terms = (torch.zeros(()), torch.zeros(()))

    @classmethod
    def build(cls, backbone, backbone_args, method_args, in_channels, image_size, **kwargs) -> "VAE":
        """Method.build, then the decoder of (in_channels, *image_size) images (see Autoencoder.build)."""
        method = super().build(backbone, backbone_args, method_args, in_channels, image_size, **kwargs)
        method.decoder = ConvDecoder(method.latent_dim, in_channels, image_size, method.decoder_width)
        return method

    def encode(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(view)
        return self.mu_head(h), self.logvar_head(h)

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [view (batch_size, C, H, W), ...]; only the first is used -> (reconstruction, target view,
        mu, logvar): two (batch_size, C, H, W) and two (batch_size, latent_dim)."""
        view = views[0]
        mu, logvar = self.encode(view)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(z), view.detach(), mu, logvar

    def loss(self, outputs):
        recon, target, mu, logvar = (t.float() for t in outputs)
        reconstruction = (recon - target).square().flatten(1).sum(dim=1).mean()
        kl = gaussian_kl(mu, logvar).mean()
        self._terms = (reconstruction.detach(), kl.detach())
        return reconstruction + self.beta * kl

    def logs(self):
        reconstruction, kl = self._terms
        return {"reconstruction": float(reconstruction), "kl": float(kl)}

    @torch.no_grad()
    def save_artifacts(self, out_dir: Path, views: list[torch.Tensor]) -> list[Path]:
        """reconstructions.png (rows of views over rows of decoder(mu)) and samples.png (decoder(z) for 32 draws of
        z ~ N(0, I) from a generator seeded with 0), both in eval mode, mapped to colours with the views' range."""
        from fastssl.eval.plots import save_image_grid

        was_training = self.training
        self.eval()
        try:
            view = grid_batch(views[0])
            columns = min(8, view.shape[0])
            recon = self.decoder(self.encode(view)[0])
            z = torch.randn(32, self.latent_dim, generator=torch.Generator().manual_seed(0))
            samples = self.decoder(z.to(view.device, recon.dtype))
        finally:
            self.train(was_training)
        reference = view.float()
        out_dir = Path(out_dir)
        paths = [out_dir / "reconstructions.png", out_dir / "samples.png"]
        save_image_grid(paths[0], interleave_rows([display_range(x.float(), reference) for x in (view, recon)],
                                                  columns), columns=columns, scale=2)
        save_image_grid(paths[1], display_range(samples.float(), reference), columns=8, scale=2)
        return paths
