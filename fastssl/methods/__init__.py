"""SSL methods, one file each, read top to bottom; ``METHODS`` maps the public names to their classes."""

from fastssl.methods.autoencoder import Autoencoder
from fastssl.methods.base import Method
from fastssl.methods.byol import BYOL
from fastssl.methods.denoising_autoencoder import DenoisingAutoencoder
from fastssl.methods.mae import MAE
from fastssl.methods.moco_v2 import MoCoV2
from fastssl.methods.rotation import Rotation
from fastssl.methods.simclr import SimCLR
from fastssl.methods.vae import VAE

METHODS = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "byol": BYOL,
    "mae": MAE,
    "rotation": Rotation,
    "autoencoder": Autoencoder,
    "denoising_autoencoder": DenoisingAutoencoder,
    "vae": VAE,
}

__all__ = ["METHODS", "Method"]
