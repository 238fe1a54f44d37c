"""Autoencoder: learn a code from which the image can be redrawn (Hinton and Salakhutdinov, "Reducing the
Dimensionality of Data with Neural Networks", Science 2006; the convolutional form: Masci et al., "Stacked
Convolutional Auto-Encoders for Hierarchical Feature Extraction", ICANN 2011).

The encoder is the backbone (its pooled features are the code, so the kNN and linear probes judge exactly what the
autoencoder learned); a convolutional decoder redraws the view from the code, and the loss is the mean squared
error against the normalised view:

    code = backbone(view)         # (batch_size, num_features)
    recon = decoder(code)         # (batch_size, C, H, W), the view's shape
    loss = mean((recon - view)^2)

Defaults (the papers trained with SGD on small fully connected nets; these are the usual modern settings): AdamW,
lr 1e-3 x batch / 256, weight decay 0.05, betas (0.9, 0.95); one view of crop (scale 0.2-1) and flip (the "mae"
preset, at every image size), no colour distortion: the decoder would have to redraw it. The decoder's width
defaults to num_features / 8 (16 channels for the CPU default ResNet-18 at width 0.25), so that it costs about
what the encoder does.

Measured on the project's shared 2-core CPU (CIFAR-10, kNN on 10,000 train / 2,000 test images; the random
initialisation scores 30.1%): a 2-minute run (50 steps of 256) 28.7%, an 8-minute budget (179 steps) 37.3%.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.methods.base import Method


class ConvDecoder(nn.Module):
    """(batch_size, in_dim) codes -> (batch_size, out_channels, H, W) images.

    A Linear layer to a (channels, h0, w0) map of at most 4 x 4 cells, then ``stages`` = ceil(log2(max(H, W) / 4))
    stages of 2x nearest-neighbour upsampling + 3x3 conv + BN + ReLU (nearest + conv rather than a transposed conv:
    no checkerboard artefacts), halving the channels from ``width * 2^stages`` (at most 8 x width) down to
    ``width``, and a 3x3 conv to ``out_channels``. Where h0 * 2^stages overshoots the size (28 x 28 MNIST:
    4 -> 32), the output is resized bilinearly to (H, W).
    """

    def __init__(self, in_dim: int, out_channels: int, image_size: Sequence[int], width: int = 64):
        super().__init__()
        height, wide = int(image_size[0]), int(image_size[1])
        if height < 1 or wide < 1:
            raise ValueError(f"image_size: must be positive, got {tuple(image_size)}")
        if width < 1:
            raise ValueError(f"decoder_width: must be >= 1, got {width}")
        self.image_size = (height, wide)
        stages = max(0, math.ceil(math.log2(max(height, wide) / 4)))
        self.grid = (math.ceil(height / 2 ** stages), math.ceil(wide / 2 ** stages))

        def channels(stage: int) -> int:  # the map's channels after `stage` upsamplings
            return min(width * 2 ** (stages - stage), 8 * width)

        self.project = nn.Linear(in_dim, channels(0) * self.grid[0] * self.grid[1])
        layers: list[nn.Module] = []
        for stage in range(1, stages + 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(channels(stage - 1), channels(stage), 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels(stage)), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels(stages), out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.project(code)).reshape(code.shape[0], -1, *self.grid)
        x = self.layers(x)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return x


def display_range(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Normalised images -> [0, 1] for a picture: per channel, the reference batch's min maps to 0 and its max
    to 1. Normalisation is a per-channel affine map, so for a batch with black and white pixels in every channel
    (any few dozen natural images) this undoes it without knowing the mean and std."""
    lo = reference.amin(dim=(0, 2, 3), keepdim=True)
    hi = reference.amax(dim=(0, 2, 3), keepdim=True)
    return ((images - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def interleave_rows(batches: Sequence[torch.Tensor], columns: int) -> torch.Tensor:
    """k batches of (N, C, H, W), N a multiple of ``columns`` -> (k * N, C, H, W) ordered so that a grid of
    ``columns`` columns shows a row of each batch in turn (originals over their reconstructions)."""
    stacked = torch.stack([b.reshape(-1, columns, *b.shape[1:]) for b in batches], dim=1)
    return stacked.reshape(-1, *batches[0].shape[1:])


def grid_batch(view: torch.Tensor, columns: int = 8, rows: int = 4) -> torch.Tensor:
    """Up to rows x columns images of the view: whole rows when there are ``columns`` images or more."""
    count = min(rows * columns, view.shape[0])
    return view[:count - count % columns] if count >= columns else view


class Autoencoder(Method):
    name = "autoencoder"
    preset = "mae"
    small_preset = "mae"
    defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    options = {"decoder_width": None}

    def __init__(self, backbone, backbone_spec, decoder_width: Optional[int], **base):
        super().__init__(backbone, backbone_spec, **base)
        self.decoder_width = decoder_width or max(1, backbone.num_features // 8)
        self.decoder: Optional[ConvDecoder] = None  # built by build(), which knows the views' shape

    @classmethod
    def build(cls, backbone, backbone_args, method_args, in_channels, image_size, **kwargs) -> "Autoencoder":
        """Method.build, then the decoder: it must draw images of the views' shape (in_channels, *image_size),
        which Method.build does not hand to __init__. Its weights are drawn right after the backbone's, from
        the same seeded generator."""
        method = super().build(backbone, backbone_args, method_args, in_channels, image_size, **kwargs)
        method.decoder = ConvDecoder(method.backbone.num_features, in_channels, image_size, method.decoder_width)
        return method

    def encode_input(self, view: torch.Tensor, step: int) -> torch.Tensor:
        """What the encoder sees: the view itself (the denoising autoencoder corrupts it here)."""
        return view

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [view (batch_size, C, H, W), ...]; only the first is used -> (reconstruction, target), both
        (batch_size, C, H, W); the target is the view, a constant."""
        view = views[0]
        return self.decoder(self.backbone(self.encode_input(view, step))), view.detach()

    def loss(self, outputs):
        recon, target = outputs
        return F.mse_loss(recon.float(), target.float())

    @torch.no_grad()
    def save_artifacts(self, out_dir: Path, views: list[torch.Tensor]) -> list[Path]:
        """reconstructions.png: rows of views over rows of the encoder's inputs (where they differ: the corrupted
        views of the denoising autoencoder) over rows of their reconstructions, in eval mode."""
        from fastssl.eval.plots import save_image_grid

        was_training = self.training
        self.eval()
        try:
            view = grid_batch(views[0])
            columns = min(8, view.shape[0])
            encoded = self.encode_input(view, step=0)
            shown = [view] + ([encoded] if encoded is not view else []) + [self.decoder(self.backbone(encoded))]
        finally:
            self.train(was_training)
        path = Path(out_dir) / "reconstructions.png"
        save_image_grid(path, interleave_rows([display_range(x.float(), view.float()) for x in shown], columns),
                        columns=columns, scale=2)
        return [path]
