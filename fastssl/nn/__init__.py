"""Drop-in nn.Modules over the fused ops."""

from fastssl.nn.contrastive import ClipLoss, MoCoLoss, NTXentLoss
from fastssl.nn.gather import gather_with_grad

__all__ = ["ClipLoss", "MoCoLoss", "NTXentLoss", "gather_with_grad"]
