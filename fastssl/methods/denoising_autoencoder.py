"""Denoising autoencoder: Vincent, Larochelle, Bengio and Manzagol, "Extracting and Composing Robust Features with
Denoising Autoencoders", ICML 2008.

The autoencoder of autoencoder.py (encoder = the backbone, a convolutional decoder), trained to redraw the CLEAN
view from a corrupted one, so that the code must capture the structure that lets it fill in what is missing:

    corrupted = corrupt(view)                   # (batch_size, C, H, W)
    loss = mean((decoder(backbone(corrupted)) - view)^2)

Corruption (``noise``):
  * "mask" (default): the paper's masking noise, zeroing a fraction of the input, applied to square patches of
    ``patch_size`` pixels rather than single pixels (a lone missing pixel is filled in from its neighbours;
    whole missing patches need context). The patches are chosen by ``fastssl.ops.random_masking`` (mask_ratio
    0.5, a fresh uniformly random subset per image); "zero" is the mean colour, as the views are normalised.
  * "gaussian": additive isotropic Gaussian noise of standard deviation ``noise_std`` (in normalised units).
The noise of step k is drawn from a generator seeded by (the run's noise seed, k), so a resumed run corrupts
exactly as the uninterrupted one did (the micro-batches and processes of one step share it; each image of a batch
has its own).

Defaults: the autoencoder's (AdamW, lr 1e-3 x batch / 256, weight decay 0.05; one crop-and-flip view), patches of
4 pixels, half of them masked; the paper trained stacked fully connected layers with SGD on 28 x 28 MNIST variants,
zeroing tens of percent of the pixels.

Measured on the project's shared 2-core CPU (CIFAR-10, kNN on 10,000 train / 2,000 test images; the random
initialisation scores 30.1%): a 2-minute run (49 steps of 256) 30.9%, an 8-minute budget (195 steps) 40.7%.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastssl.methods.autoencoder import Autoencoder
from fastssl.ops import random_masking
from fastssl.train.engine import _seed_for

NOISES = ("mask", "gaussian")


class DenoisingAutoencoder(Autoencoder):
    name = "denoising_autoencoder"
    options = {**Autoencoder.options, "noise": "mask", "mask_ratio": 0.5, "patch_size": 4, "noise_std": 0.5}

    def __init__(self, backbone, backbone_spec, decoder_width, noise: str, mask_ratio: float, patch_size: int,
                 noise_std: float, **base):
        super().__init__(backbone, backbone_spec, decoder_width, **base)
        if noise not in NOISES:
            raise ValueError(f"noise: expected one of {', '.join(NOISES)}, got {noise!r}")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio: must lie in [0, 1), got {mask_ratio!r}")
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size: must be a positive integer, got {patch_size!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std: must be >= 0, got {noise_std!r}")
        self.noise, self.mask_ratio, self.patch_size, self.noise_std = noise, mask_ratio, int(patch_size), noise_std
        # Drawn from the seeded global generator at construction and saved with the weights (get_extra_state).
        self.noise_seed = int(torch.randint(2 ** 62, ()))

    def get_extra_state(self):
        return {"noise_seed": self.noise_seed}

    def set_extra_state(self, state) -> None:
        self.noise_seed = int(state["noise_seed"])

    def corruption_mask(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """float32 (batch_size, 1, height, width) on the CPU, 1 where a pixel is dropped: random_masking over the
        ceil(height / p) x ceil(width / p) patch grid, each patch cell blown up to p x p pixels."""
        p = self.patch_size
        grid_h, grid_w = math.ceil(height / p), math.ceil(width / p)
        _, mask, _ = random_masking(batch_size, grid_h * grid_w, self.mask_ratio, generator=generator)
        mask = mask.reshape(batch_size, 1, grid_h, grid_w)
        return F.interpolate(mask, scale_factor=p, mode="nearest")[:, :, :height, :width]

    def encode_input(self, view: torch.Tensor, step: int) -> torch.Tensor:
        """The corrupted view, (batch_size, C, H, W)."""
        seed = _seed_for(self.noise_seed, step)
        if self.noise == "mask":
            batch, _, height, width = view.shape
            mask = self.corruption_mask(batch, height, width, torch.Generator().manual_seed(seed))
            return view * (1 - mask).to(view.device, view.dtype)
        generator = torch.Generator(view.device).manual_seed(seed)
        noise = torch.randn(view.shape, generator=generator, device=view.device, dtype=view.dtype)
        return view + self.noise_std * noise
