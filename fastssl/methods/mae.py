"""MAE: He, Chen, Xie, Li, Dollar and Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.

A random 75% of each image's patches is masked; the ViT encoder sees only the visible 25% (no mask tokens), and a
light Transformer decoder, given the encoded visible tokens and a shared learned mask token at every masked
position (plus fixed sin-cos position embeddings), predicts the pixels of the masked patches. The loss is the mean
squared error on the masked patches only, against per-patch normalised pixels (norm_pix_loss):

    ids_keep, mask, ids_restore = random_masking(B, L, 0.75)       # K = L / 4 visible patches per image
    visible = patchify_gather(view, p, ids_keep)                   # (B, K, p*p*C), read straight from the view
    latent = backbone.forward_patches(visible, ids_keep)           # (B, 1 + K, D), cls first
    tokens = unshuffle_with_mask_token(embed(latent[:, 1:]), mask_token, ids_restore)   # (B, L, D_dec)
    pred = decoder([cls, tokens + pos])                            # (B, L - K, p*p*C) at the masked patches
    loss = mean((pred - patchify_gather(view, p, ids_masked, normalize_pixels=True))^2)

The masking noise of step k is drawn from a generator seeded by (the run's mask seed, k), so a resumed run masks
exactly as the uninterrupted one did (the micro-batches and processes of one step share the noise rows; each
image of a batch has its own mask). The backbone's features (what kNN and the probe judge) are the mean of its
patch tokens (``pool="mean"``, the paper's fine-tuning choice; it reports the cls token working about as well;
--backbone-arg pool=cls restores it).

Defaults: the paper's AdamW lr 1.5e-4 x batch / 256, weight decay 0.05, betas (0.9, 0.95), mask ratio 0.75,
norm-pix loss; views: RandomResizedCrop (scale 0.2-1) and flip only (the "mae" preset, at every image size).
The paper's decoder is 8 blocks of width 512 (16 heads) behind a ViT-L; fastssl's default decoder is 2 blocks of
width 128 (4 heads) behind the ViT-Tiny default backbone (its Table 1: a 1-block decoder loses little in
fine-tuning), so that a CPU sees many steps.

Measured on the project's shared 2-core CPU (CIFAR-10, ViT-Tiny with patch 4, kNN on 10,000 train / 2,000 test
images; the random initialisation scores 31.6%): a 2-minute run (29 steps of 256) 30.6%, an 8-minute budget
(176 steps, loss 0.72 against the 1.0 of predicting each patch's mean) 28.3%, and 27.3% at 10x the lr. The loss
falls, but MAE's representation needs far longer training (the paper pretrains for 800-1600 epochs). With a
20-minute budget on a faster 2-core machine (2026-12-07, 633 steps, loss 0.67) it reached 38.5% kNN and a 49.1%
linear probe against the random initialisation's 31.6% and 45.9%; with seed 1 (653 steps) 38.75% and 46.7% against
its initialisation's 31.25% and 43.35%.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.methods.base import Method
from fastssl.models import VisionTransformer, sincos_pos_embed_2d
from fastssl.models.transformer import _init_transformer_weights, transformer_blocks
from fastssl.ops import gather_tokens, patchify_gather, random_masking, unshuffle_with_mask_token
from fastssl.train.engine import _seed_for


class MAE(Method):
    name = "mae"
    preset = "mae"
    small_preset = "mae"
    default_backbone = "vit_tiny"
    global_batchnorm = False  # no BatchNorm anywhere
    defaults = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.05}
    options = {"mask_ratio": 0.75, "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4,
               "norm_pix_loss": True}

    @classmethod
    def build(cls, backbone, backbone_args, method_args, *args, **kwargs) -> "MAE":
        """Method.build with a ViT backbone that mean-pools its patch tokens unless ``backbone_args`` says."""
        name = backbone or cls.default_backbone
        if not name.startswith("vit"):
            raise ValueError(f"backbone: mae encodes patches with a ViT (vit_tiny, vit_small), got {name!r}")
        return super().build(backbone, {"pool": "mean", **backbone_args}, method_args, *args, **kwargs)

    def __init__(self, backbone, backbone_spec, mask_ratio: float, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int, norm_pix_loss: bool, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"backbone: mae needs a VisionTransformer, got {type(backbone).__name__}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio: must lie in (0, 1), got {mask_ratio!r}")
        visible = int(backbone.num_patches * (1 - mask_ratio))
        if not 1 <= visible < backbone.num_patches:
            raise ValueError(f"mask_ratio: {mask_ratio} leaves {visible} of {backbone.num_patches} patches "
                             f"visible; MAE needs some visible and some masked")
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim: must be a multiple of 4 and of decoder_heads ({decoder_heads}), "
                             f"got {decoder_dim}")
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.decoder_embed = nn.Linear(backbone.num_features, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        # Fixed, like the encoder's: a buffer recomputed from the config, not saved.
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, *backbone.grid_size)[None],
                             persistent=False)
        self.decoder_blocks = transformer_blocks(decoder_dim, decoder_depth, decoder_heads)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, backbone.patch_dim)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        # Seeds the masks of every step; drawn from the seeded global generator, saved with the weights.
        self.mask_seed = int(torch.randint(2 ** 62, ()))

    def get_extra_state(self):
        return {"mask_seed": self.mask_seed}

    def set_extra_state(self, state) -> None:
        self.mask_seed = int(state["mask_seed"])

    def masking(self, batch_size: int, step: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``step``'s masks: ids_keep (B, K), ids_masked (B, L - K), ids_restore (B, L), int64 on ``device``.
        The (B, L) noise is drawn on the CPU (the same masks on every device) and moved."""
        num_patches = self.backbone.num_patches
        noise = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(
            _seed_for(self.mask_seed, step)))
        ids_keep, _, ids_restore = random_masking(batch_size, num_patches, self.mask_ratio, noise=noise.to(device))
        # The patches in noise order (ids_restore's inverse): the kept ones first, then the masked ones.
        positions = torch.arange(num_patches, device=device).expand(batch_size, -1)
        ids_shuffle = torch.empty_like(ids_restore).scatter_(1, ids_restore, positions)
        return ids_keep, ids_shuffle[:, ids_keep.shape[1]:], ids_restore

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [view (B, C, H, W), ...]; only the first is used -> (predictions, targets), both
        (B, L - K, p*p*C): the decoder's pixels at the masked patches and their (normalised) true pixels.
        The indices come from ``random_masking`` (in range by construction): ``check_range=False`` keeps the
        gathers from reading them back to the host, a GPU sync per call."""
        view = views[0]
        p = self.backbone.patch_size
        ids_keep, ids_masked, ids_restore = self.masking(view.shape[0], step, view.device)
        latent = self.backbone.forward_patches(patchify_gather(view, p, ids_keep, check_range=False), ids_keep)  # (B, 1 + K, D)
        x = self.decoder_embed(latent)
        tokens = unshuffle_with_mask_token(x[:, 1:], self.mask_token, ids_restore, check_range=False)  # (B, L, D_dec)
        x = torch.cat([x[:, :1], tokens + self.decoder_pos_embed.to(tokens.dtype)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, 1:]  # drop the cls token
        pred = self.decoder_pred(gather_tokens(x, ids_masked, check_range=False))  # only the masked patches are predicted
        target = patchify_gather(view.detach(), p, ids_masked, normalize_pixels=self.norm_pix_loss,
                                 check_range=False)
        return pred, target

    def loss(self, outputs):
        """The paper's loss: the squared error averaged over the pixels of each masked patch, then over the
        masked patches (every image has the same number of them, so one mean over all)."""
        pred, target = outputs
        return F.mse_loss(pred.float(), target.float())
