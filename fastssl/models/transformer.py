"""Pre-LN Transformer blocks (shared with the ViT) and a small text Transformer.

Attention goes through ``F.scaled_dot_product_attention``, which picks FlashAttention / memory-efficient
kernels on the GPU and never materialises the (T, T) score matrix there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drops a sample's whole residual branch with probability ``p``
    during training and scales the kept ones by 1 / (1 - p). DINO trains ViT-S with p up to 0.1."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1.0 - self.p).div_(1.0 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention; (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        batch, tokens, dim = x.shape
        # (B, T, 3, heads, head_dim) -> 3 x (B, heads, T, head_dim)
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0,
                                             is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), a GELU MLP of ``mlp_ratio * dim``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), causal=causal))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TextTransformer(nn.Module):
    """A small GPT/BERT-style text model: token + learned position embeddings, pre-LN blocks, final LayerNorm.

    Args:
        vocab_size: number of token ids (a :class:`~fastssl.data.CharTokenizer`'s ``vocab_size``).
        max_len: longest sequence (size of the position table).
        dim, depth, num_heads, mlp_ratio: width, number of blocks, heads, MLP expansion.
        causal: each position attends only to itself and earlier ones (language modelling); False for a
            bidirectional encoder (masked language modelling).
        lm_head: add ``self.lm_head``, a bias-free Linear(dim, vocab_size) whose weight is the token
            embedding's (tied, as in GPT-2 and BERT); None otherwise.
        dropout: on embeddings, attention and MLP outputs.

    Shapes: ``forward(tokens)``: int64 (B, T) with T <= max_len -> hidden states (B, T, dim); the logits are
    ``model.lm_head(hidden)``: (B, T, vocab_size).
    """

    def __init__(self, vocab_size: int, max_len: int = 256, dim: int = 256, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, causal: bool = True, lm_head: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.causal = causal
        self.max_len = max_len
        self.num_features = dim
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False) if lm_head else None
        self.apply(_init_transformer_weights)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        if self.lm_head is not None:
            self.lm_head.weight = self.token_embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens: expected (B, T) with T <= max_len={self.max_len}, got "
                             f"{tuple(tokens.shape)}")
        x = self.dropout(self.token_embed(tokens) + self.pos_embed[:, : tokens.shape[1]])
        for block in self.blocks:
            x = block(x, causal=self.causal)
        return self.norm(x)


def _init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorms (the init of MAE and MoCo v3's ViTs)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                       drop_path_rate: float = 0.0) -> nn.ModuleList:
    """``depth`` blocks with stochastic depth rising linearly from 0 to ``drop_path_rate`` (DeiT / DINO)."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 0 else []
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, drop_path=r) for r in rates)
