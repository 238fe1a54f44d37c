"""CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.

An image encoder (the backbone: a ResNet by default, a ViT with ``--backbone vit_tiny``) and a text Transformer
each map their input to a feature, a linear projection (no bias) maps it into a shared embedding space, and the
loss is the symmetric cross-entropy over the N x N cosine similarities of a batch of N image-caption pairs,
scaled by a learnable temperature: logit_scale = exp(t), t initialised to log(1 / 0.07) and clipped so that the
scale never exceeds 100. fastssl computes the loss with the fused ``clip_loss`` op (``fastssl.nn.ClipLoss``; the
N x N matrix is never built, and a multi-process run contrasts against every rank's pairs).

The text encoder is CLIP's in miniature: a causal Transformer over characters (CLIP: BPE tokens), lower-cased,
padded to ``context_length``; its feature is the final LayerNorm's output at the caption's last character (CLIP:
the [EOS] token, which under the causal mask has read the whole caption).

The image-text pairs are LABEL-DERIVED, not natural captions: each training image of a labelled data set
(CIFAR-10 by default) gets the caption of its class name in one of CLIP's 18 CIFAR-10 prompt templates ("a photo
of a {}.", "a blurry photo of a {}.", ...), the template drawn per image from the step's seeded generator. The
images go through the engine's view pipeline (one view). Pairs of the same class are negatives of each other in
the loss, as duplicate captions are in CLIP's web data.

Defaults: CLIP trains with Adam, decoupled weight decay 0.2 (not on gains, biases or the temperature), betas
(0.9, 0.98), eps 1e-6, lr 5e-4 (ResNet-50) at batch 32,768, cosine schedule with 2,000 warm-up steps; embedding
512 to 1024 wide, a text Transformer of width 512, 12 layers, 8 heads, 77 tokens. Here: AdamW (the engine's
betas (0.9, 0.95)), weight decay 0.2, lr 1e-3 not scaled with the batch; embedding 128 wide, a text Transformer
of width 128, 2 layers, 4 heads, 48 characters; batch 64, for a CPU budget: in 90 s on this project's shared
2-core CPU (ResNet-18 at width 0.25), batch 64 ran 125 steps to 25% zero-shot accuracy on CIFAR-10, batch 128
ran 53 steps to 16% (and with ten classes, a larger batch holds more same-class false negatives).

Evaluation: zero-shot classification of the test split, each class represented by the mean of its normalised
caption embeddings over the 18 templates (CLIP's prompt ensembling); the backbone also gets the kNN and linear
probes of every image method.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.data import CharTokenizer
from fastssl.methods.base import Method
from fastssl.models import TextTransformer
from fastssl.nn import ClipLoss

# CLIP's prompt templates for CIFAR-10 (its repository's data/prompts.md).
TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
)
# The caption alphabet: printable ASCII (captions are lower-cased first).
CHARACTERS = "".join(chr(c) for c in range(32, 127))


class CLIP(Method):
    name = "clip"
    preset = "mae"  # CLIP augments with random crops alone; MAE's preset is crop + flip
    data_kind = "image_text"
    num_views = 1
    defaults = {"optimizer": "adamw", "lr": 1e-3, "lr_scaling": "none", "weight_decay": 0.2, "batch_size": 64}
    options = {"embed_dim": 128, "context_length": 48, "text_dim": 128, "text_depth": 2, "text_heads": 4,
               "logit_scale_init": 1 / 0.07, "logit_scale_max": 100.0}

    def __init__(self, backbone, backbone_spec, embed_dim: int, context_length: int, text_dim: int, text_depth: int,
                 text_heads: int, logit_scale_init: float, logit_scale_max: float, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not 1 <= logit_scale_init <= logit_scale_max:
            raise ValueError(f"logit_scale_init: must lie in [1, logit_scale_max={logit_scale_max}], got "
                             f"{logit_scale_init}")
        self.tokenizer = CharTokenizer(CHARACTERS)
        self.context_length = context_length
        self.text_encoder = TextTransformer(self.tokenizer.vocab_size, max_len=context_length, dim=text_dim,
                                            depth=text_depth, num_heads=text_heads, causal=True)
        self.image_projection = nn.Linear(backbone.num_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        nn.init.normal_(self.image_projection.weight, std=backbone.num_features ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=text_dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.criterion = ClipLoss(gather_distributed=self.distributed, backend=self.loss_backend)

    # ------------------------------------------------------------------------------------------------------------
    # captions
    # ------------------------------------------------------------------------------------------------------------

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> int64 (N, context_length): lower-cased characters, cut at context_length, then [PAD]."""
        tokens = torch.full((len(captions), self.context_length), self.tokenizer.pad_id, dtype=torch.int64)
        for i, caption in enumerate(captions):
            try:
                ids = self.tokenizer.encode(caption.lower()[:self.context_length])
            except ValueError as exc:
                raise ValueError(f"caption {caption!r}: {exc} (captions are printable ASCII)") from None
            if ids.numel() == 0:
                raise ValueError("captions: an empty caption")
            tokens[i, :ids.numel()] = ids
        return tokens

    def caption_inputs(self, labels, classes, generator):
        """labels (B,) -> [caption tokens (B, context_length)]: each image's class name in a template drawn
        from ``generator``."""
        choice = torch.randint(len(TEMPLATES), labels.shape, generator=generator)
        captions = [TEMPLATES[t].format(class_name(classes[c])) for t, c in zip(choice.tolist(), labels.tolist())]
        return [self.tokenize(captions)]

    # ------------------------------------------------------------------------------------------------------------
    # encoders and loss
    # ------------------------------------------------------------------------------------------------------------

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 (N, context_length) -> (N, embed_dim): the hidden state at each caption's last character."""
        hidden = self.text_encoder(tokens)
        last = (tokens != self.tokenizer.pad_id).sum(1) - 1
        return self.text_projection(hidden[torch.arange(tokens.shape[0], device=tokens.device), last])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, embed_dim)."""
        return self.image_projection(self.backbone(images))

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [images (B, C, H, W), captions (B, context_length)] -> image embeddings (B, embed_dim), text
        embeddings (B, embed_dim) and the logit scale (0-d)."""
        images, captions = views
        return self.encode_image(images), self.encode_text(captions), self.logit_scale.exp()

    def loss(self, outputs):
        image, text, scale = outputs
        return self.criterion(image.float(), text.float(), scale.float())

    def after_step(self, step: int, horizon: int) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.logit_scale_max))

    def logs(self):
        return {"logit_scale": float(self.logit_scale.detach().exp())}

    # ------------------------------------------------------------------------------------------------------------
    # zero-shot classification
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def class_embeddings(self, classes: Sequence[str]) -> torch.Tensor:
        """(num_classes, embed_dim) unit vectors: per class, the mean of its normalised caption embeddings over
        the templates, normalised again (CLIP's prompt ensemble)."""
        was_training = self.training
        self.eval()
        try:
            device = self.logit_scale.device
            captions = [t.format(class_name(c)) for c in classes for t in TEMPLATES]
            text = F.normalize(self.encode_text(self.tokenize(captions).to(device)).float(), dim=-1)
            return F.normalize(text.view(len(classes), len(TEMPLATES), -1).mean(1), dim=-1)
        finally:
            self.train(was_training)


def class_name(name: str) -> str:
    """A folder-style class name as words: "golden_retriever" -> "golden retriever"."""
    return str(name).replace("_", " ")
