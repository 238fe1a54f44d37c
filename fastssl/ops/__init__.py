"""The public fused ops. Each module holds the op, its reference, its dispatch and its torch.library registration."""

from fastssl._dispatch import OPS
from fastssl.ops.augment import AugmentParams, PackedImages, augment, augment_reference
from fastssl.ops.info_nce import (
    clip_loss,
    clip_loss_reference,
    info_nce,
    info_nce_reference,
    nt_xent,
    nt_xent_reference,
)
from fastssl.ops.masking import (
    block_masking,
    gather_tokens,
    gather_tokens_reference,
    mask_tokens,
    patchify_gather,
    patchify_gather_reference,
    random_masking,
    random_masking_reference,
    unshuffle_with_mask_token,
    unshuffle_with_mask_token_reference,
)

__all__ = [
    "OPS",
    "AugmentParams",
    "PackedImages",
    "augment",
    "augment_reference",
    "block_masking",
    "clip_loss",
    "clip_loss_reference",
    "gather_tokens",
    "gather_tokens_reference",
    "info_nce",
    "info_nce_reference",
    "mask_tokens",
    "nt_xent",
    "nt_xent_reference",
    "patchify_gather",
    "patchify_gather_reference",
    "random_masking",
    "random_masking_reference",
    "unshuffle_with_mask_token",
    "unshuffle_with_mask_token_reference",
]
