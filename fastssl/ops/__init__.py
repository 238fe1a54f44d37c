"""The public fused ops. Each module holds the op, its reference, its dispatch and its torch.library registration."""

from fastssl.ops.info_nce import BACKENDS as _CONTRASTIVE_BACKENDS
from fastssl.ops.info_nce import (
    clip_loss,
    clip_loss_reference,
    info_nce,
    info_nce_reference,
    nt_xent,
    nt_xent_reference,
)

# op name -> its backends, in the order "auto" tries them (for `fastssl info`).
OPS = {
    "nt_xent": _CONTRASTIVE_BACKENDS,
    "info_nce": _CONTRASTIVE_BACKENDS,
    "clip_loss": _CONTRASTIVE_BACKENDS,
}

__all__ = [
    "OPS",
    "clip_loss",
    "clip_loss_reference",
    "info_nce",
    "info_nce_reference",
    "nt_xent",
    "nt_xent_reference",
]
