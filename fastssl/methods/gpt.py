"""GPT: autoregressive language modelling. Radford, Narasimhan, Salimans and Sutskever, "Improving Language
Understanding by Generative Pre-Training", 2018; Radford et al., "Language Models are Unsupervised Multitask
Learners" (GPT-2), 2019. Character-level, as Karpathy's nanoGPT trains it on tiny Shakespeare (shakespeare_char).

A causal Transformer (each position attends to itself and the positions before it) reads a window of
``block_size`` characters and predicts, at every position, the next character; the loss is the mean
cross-entropy over all positions (nats; divide by ln 2 for bits per character). The output layer is the token
embedding's transpose (weight tying, GPT-2).

Defaults: AdamW with betas (0.9, 0.95) and weight decay 0.1 on the weight matrices and embeddings (GPT-3 and
nanoGPT; biases and LayerNorms are not decayed), gradient clipping at norm 1.0, linear warm-up then cosine decay;
lr 1e-3 as nanoGPT's shakespeare_char (a small model tolerates more than GPT-2's 6e-4), not scaled with the batch.
nanoGPT's shakespeare_char model is 6 layers of width 384, 6 heads, block 256, batch 64, dropout 0.2; its CPU
recipe is 4 layers of width 128, 4 heads, block 64, batch 12. The defaults here are for a 2-minute CPU budget:
2 layers of width 128, 4 heads, block 64, batch 16 (1,024 tokens a step), dropout 0 (a model this small does not
overfit a million characters in minutes). Measured on this project's shared 2-core CPU, 90 s each: 4 layers at
block 128 and batch 32 ran 116 steps to 3.95 bits per character, 2 layers at block 64 and batch 16 ran 967 steps
to 2.99: at this budget the number of steps matters more than the model's size.

Evaluation (:meth:`GPT.evaluate_text`): bits per character on the validation split (the last 10% of the
corpus) next to the unigram baseline of the training split (about 4.8 bits for tiny Shakespeare).
``fastssl sample --checkpoint ...`` prints generated text (:meth:`GPT.generate`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.eval.text import causal_lm_bits_per_char, unigram_bits_per_char
from fastssl.methods.base import Method


class GPT(Method):
    name = "gpt"
    data_kind = "text"
    default_data = "shakespeare"
    global_batchnorm = False
    defaults = {"optimizer": "adamw", "lr": 1e-3, "lr_scaling": "none", "weight_decay": 0.1, "batch_size": 16,
                "clip_grad": 1.0}
    options = {"block_size": 64}
    text_backbone = {"dim": 128, "depth": 2, "num_heads": 4, "causal": True, "lm_head": True, "dropout": 0.0}

    def __init__(self, backbone, backbone_spec, tokenizer, block_size: int, **base):
        super().__init__(backbone, backbone_spec, **base)
        if not backbone.causal or backbone.lm_head is None:
            raise ValueError("backbone_args: gpt needs causal=True and lm_head=True")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        self.tokenizer = tokenizer
        self.block_size = block_size

    def text_window(self) -> int:
        return self.block_size + 1  # block_size inputs and, shifted by one, their targets

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 (B, T) -> next-token logits (B, T, vocab_size)."""
        return self.backbone.lm_head(self.backbone(tokens))

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [windows (B, block_size + 1)] -> (logits (B, block_size, vocab_size), targets (B, block_size))."""
        (windows,) = views
        return self.logits(windows[:, :-1]), windows[:, 1:]

    def loss(self, outputs):
        logits, targets = outputs
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate_text(self, dataset, device=None) -> dict[str, float]:
        """val_bits_per_char of the model and unigram_bits_per_char (the training split's character frequencies)
        on ``dataset``'s validation split."""
        self.eval()
        return {
            "val_bits_per_char": causal_lm_bits_per_char(self.logits, dataset.val_tokens, self.block_size,
                                                         device=device),
            "unigram_bits_per_char": unigram_bits_per_char(dataset.train_tokens, dataset.val_tokens,
                                                           num_symbols=self.tokenizer.pad_id),
        }

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, length: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """int64 (T0,) prompt ids -> (T0 + length,): ``length`` ids sampled one at a time from the softmax of the
        last position's logits / ``temperature`` (0: the most likely id), conditioned on the last ``block_size``
        ids. Only character ids are drawn (never [PAD] or [MASK])."""
        if length < 0:
            raise ValueError(f"length: must be >= 0, got {length}")
        if temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {temperature}")
        if prompt.dim() != 1 or prompt.numel() == 0:
            raise ValueError(f"prompt: expected a non-empty 1-D tensor of ids, got shape {tuple(prompt.shape)}")
        self.eval()
        device = next(self.parameters()).device
        ids = prompt.to(device)
        for _ in range(length):
            logits = self.logits(ids[-self.block_size:][None])[0, -1, :self.tokenizer.pad_id].float()
            if temperature == 0:
                nxt = logits.argmax()[None]
            else:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            ids = torch.cat([ids, nxt])
        return ids.cpu()
