"""SSL methods, one file each, read top to bottom; ``METHODS`` maps the public names to their classes."""

from fastssl.methods.base import Method
from fastssl.methods.byol import BYOL
from fastssl.methods.clip import CLIP
from fastssl.methods.gpt import GPT
from fastssl.methods.mlm import MLM
from fastssl.methods.moco_v2 import MoCoV2
from fastssl.methods.simclr import SimCLR

METHODS = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "byol": BYOL,
    "clip": CLIP,
    "mlm": MLM,
    "gpt": GPT,
}

__all__ = ["METHODS", "Method"]
