"""MLM: BERT's masked language modelling. Devlin, Chang, Lee and Toutanova, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", NAACL 2019. Character-level here.

Each position of a window is selected with probability 0.15; a selected character becomes [MASK] 80% of the
time, a random character 10% and stays itself 10% (``fastssl.ops.mask_tokens``, the masks drawn from the step's
seeded generator). A bidirectional Transformer reads the corrupted window and predicts the original character at
the selected positions only; the loss is their mean cross-entropy. The output layer is the token embedding's
transpose (tied, as BERT's); BERT's extra transform layer (dense + GELU + LayerNorm) before it is left out.

Defaults: BERT uses Adam with weight decay 0.01, lr 1e-4 with 10k warm-up steps then linear decay, dropout 0.1,
batch 256 x 512 tokens, for a 110M-parameter model. Here: AdamW (the engine's betas (0.9, 0.95)), weight decay
0.01, warm-up then cosine decay, lr 1e-3 (models of a million parameters train at higher rates than BERT-base;
ELECTRA-Small uses 5e-4), not scaled with the batch, gradient clipping at norm 1.0; for a 2-minute CPU budget,
2 layers of width 128, 4 heads, windows of 64 characters, batch 16, dropout 0 (as gpt: in 90 s on this project's
CPU, batch 16 ran 1,052 steps to 37.8% masked accuracy, batch 32 ran 505 to 26.1%).

Evaluation (:meth:`MLM.evaluate_text`): masked-token accuracy and cross-entropy on the validation split (the last
10% of the corpus; masks from a fixed seed), next to always predicting the most frequent training character and
the unigram cross-entropy of the training split's character frequencies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastssl.eval.text import majority_accuracy, masked_lm_metrics, unigram_bits_per_char
from fastssl.methods.base import Method
from fastssl.ops import mask_tokens


class MLM(Method):
    name = "mlm"
    data_kind = "text"
    default_data = "shakespeare"
    global_batchnorm = False
    defaults = {"optimizer": "adamw", "lr": 1e-3, "lr_scaling": "none", "weight_decay": 0.01, "batch_size": 16,
                "clip_grad": 1.0}
    options = {"block_size": 64, "mask_prob": 0.15}
    text_backbone = {"dim": 128, "depth": 2, "num_heads": 4, "causal": False, "lm_head": True, "dropout": 0.0}

    def __init__(self, backbone, backbone_spec, tokenizer, block_size: int, mask_prob: float, **base):
        super().__init__(backbone, backbone_spec, **base)
        if backbone.causal or backbone.lm_head is None:
            raise ValueError("backbone_args: mlm needs causal=False and lm_head=True")
        if not 0 < mask_prob <= 1:
            raise ValueError(f"mask_prob: must lie in (0, 1], got {mask_prob}")
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.mask_prob = mask_prob

    def text_window(self) -> int:
        return self.block_size

    def text_inputs(self, windows, generator):
        """windows (B, block_size) -> [masked ids (B, block_size), labels (B, block_size): the original id at
        the selected positions, -100 elsewhere]. Random replacements are characters, never [PAD] or [MASK]."""
        masked, labels = mask_tokens(windows, vocab_size=self.tokenizer.pad_id, mask_token_id=self.tokenizer.mask_id,
                                     mask_prob=self.mask_prob, generator=generator)
        return [masked, labels]

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 (B, T) -> logits (B, T, vocab_size) of the original token at every position."""
        return self.backbone.lm_head(self.backbone(tokens))

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [masked ids (B, T), labels (B, T)] -> (logits (M, vocab_size), targets (M,)) at the M selected
        positions: the output layer runs on those alone (15% of the positions)."""
        masked, labels = views
        selected = labels != -100
        hidden = self.backbone(masked)[selected]
        return self.backbone.lm_head(hidden), labels[selected]

    def loss(self, outputs):
        logits, targets = outputs
        # A sum over at least one: a batch with no selected position (tiny batches) gives 0, not NaN.
        return F.cross_entropy(logits.float(), targets, reduction="sum") / max(targets.numel(), 1)

    @torch.no_grad()
    def evaluate_text(self, dataset, device=None) -> dict[str, float]:
        """masked_accuracy and masked_loss (nats) on ``dataset``'s validation split with the masks of seed 0,
        majority_accuracy (the most frequent training character's share of the validation characters) and
        unigram_loss (nats)."""
        self.eval()
        metrics = masked_lm_metrics(self.logits, self.text_inputs, dataset.val_tokens, self.block_size, seed=0,
                                    device=device)
        unigram_bits = unigram_bits_per_char(dataset.train_tokens, dataset.val_tokens,
                                             num_symbols=self.tokenizer.pad_id)
        return {
            "masked_accuracy": metrics["masked_accuracy"],
            "majority_accuracy": majority_accuracy(dataset.train_tokens, dataset.val_tokens),
            "masked_loss": metrics["masked_loss"],
            "unigram_loss": unigram_bits * math.log(2),
        }
