"""SSL methods, one file each, read top to bottom; ``METHODS`` maps the public names to their classes."""

from fastssl.methods.autoencoder import Autoencoder
from fastssl.methods.barlow_twins import BarlowTwins
from fastssl.methods.base import Method
from fastssl.methods.byol import BYOL
from fastssl.methods.clip import CLIP
from fastssl.methods.denoising_autoencoder import DenoisingAutoencoder
from fastssl.methods.dino import DINO
from fastssl.methods.gpt import GPT
from fastssl.methods.mae import MAE
from fastssl.methods.mlm import MLM
from fastssl.methods.moco_v2 import MoCoV2
from fastssl.methods.moco_v3 import MoCoV3
from fastssl.methods.rotation import Rotation
from fastssl.methods.simclr import SimCLR
from fastssl.methods.simsiam import SimSiam
from fastssl.methods.vae import VAE
from fastssl.methods.vicreg import VICReg

METHODS = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "byol": BYOL,
    "clip": CLIP,
    "mlm": MLM,
    "gpt": GPT,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "moco_v3": MoCoV3,
    "dino": DINO,
    "mae": MAE,
    "rotation": Rotation,
    "autoencoder": Autoencoder,
    "denoising_autoencoder": DenoisingAutoencoder,
    "vae": VAE,
}

__all__ = ["METHODS", "Method"]
