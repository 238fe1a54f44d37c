"""The public fused ops. Each module holds the op, its reference, its dispatch and its torch.library registration."""

from fastssl._dispatch import OPS
from fastssl.ops.info_nce import (
    clip_loss,
    clip_loss_reference,
    info_nce,
    info_nce_reference,
    nt_xent,
    nt_xent_reference,
)

__all__ = [
    "OPS",
    "clip_loss",
    "clip_loss_reference",
    "info_nce",
    "info_nce_reference",
    "nt_xent",
    "nt_xent_reference",
]
