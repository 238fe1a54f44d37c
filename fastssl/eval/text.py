"""Evaluation of the text methods on the validation split of their corpus, next to the baselines that need no model.

    bits = causal_lm_bits_per_char(model_logits, dataset.val_tokens, block_size=128)
    baseline = unigram_bits_per_char(dataset.train_tokens, dataset.val_tokens, num_symbols=tokenizer.pad_id)

- language modelling (``gpt``): bits per character on the validation split, every token predicted once from up
  to ``block_size`` tokens of context, against the unigram model of the training split (the cross-entropy of the
  validation characters under the training split's character frequencies, add-one smoothed);
- masked language modelling (``mlm``): accuracy and cross-entropy on the masked positions of the validation
  split (masks drawn from a fixed seed), against always predicting the most frequent training character (its
  share of the validation characters) and the unigram cross-entropy.

``logits_fn`` maps int64 tokens (B, T) to float logits (B, T, V) on the model's device.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LogitsFn = Callable[[Tensor], Tensor]
CorruptFn = Callable[[Tensor, torch.Generator], list]


def unigram_log_probs(train_tokens: Tensor, num_symbols: int, smoothing: float = 1.0) -> Tensor:
    """float64 (num_symbols,) log-probabilities of the training split's token frequencies, each count plus
    ``smoothing`` (add-one by default: a character absent from training keeps a finite cost)."""
    if train_tokens.numel() == 0:
        raise ValueError("train_tokens: empty")
    if int(train_tokens.max()) >= num_symbols or int(train_tokens.min()) < 0:
        raise ValueError(f"train_tokens: ids must lie in [0, num_symbols={num_symbols})")
    counts = torch.bincount(train_tokens.cpu(), minlength=num_symbols).double() + smoothing
    return (counts / counts.sum()).log()


def unigram_bits_per_char(train_tokens: Tensor, val_tokens: Tensor, num_symbols: int,
                          smoothing: float = 1.0) -> float:
    """Bits per character of ``val_tokens`` under the unigram distribution of ``train_tokens``:
    -mean log2 p(c) over the validation characters (the baseline a language model must beat)."""
    log_p = unigram_log_probs(train_tokens, num_symbols, smoothing)
    if int(val_tokens.max()) >= num_symbols or int(val_tokens.min()) < 0:
        raise ValueError(f"val_tokens: ids must lie in [0, num_symbols={num_symbols})")
    return float(-log_p[val_tokens.cpu()].mean() / math.log(2))


def majority_accuracy(train_tokens: Tensor, targets: Tensor) -> float:
    """Share of ``targets`` equal to the most frequent token of ``train_tokens``."""
    majority = torch.bincount(train_tokens.cpu()).argmax()
    return float((targets.cpu() == majority).double().mean())


@torch.no_grad()
def causal_lm_bits_per_char(logits_fn: LogitsFn, tokens: Tensor, block_size: int, batch_size: int = 64,
                            device: Optional[torch.device] = None) -> float:
    """Bits per character of a next-token model on ``tokens``: windows of ``block_size + 1`` tokens every
    ``block_size`` positions, so that every token but the first is predicted exactly once (from 1 to
    ``block_size`` tokens of context); returns -sum log2 p / (len(tokens) - 1)."""
    if block_size < 1 or len(tokens) < 2:
        raise ValueError(f"block_size: expected >= 1 with >= 2 tokens, got {block_size} and {len(tokens)} tokens")
    starts = list(range(0, len(tokens) - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= len(tokens)]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    if len(full) < len(starts):
        groups.append([starts[-1]])  # the tail, shorter than a window
    total_nats, count = 0.0, 0
    for group in groups:
        length = min(block_size + 1, len(tokens) - group[0])
        windows = torch.stack([tokens[s:s + length] for s in group]).to(device or tokens.device)
        logits = logits_fn(windows[:, :-1]).float()
        total_nats += float(F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum"))
        count += windows[:, 1:].numel()
    return total_nats / count / math.log(2)


@torch.no_grad()
def masked_lm_metrics(logits_fn: LogitsFn, corrupt: CorruptFn, tokens: Tensor, block_size: int, seed: int = 0,
                      batch_size: int = 64, device: Optional[torch.device] = None) -> dict[str, float]:
    """Masked-token accuracy and cross-entropy (nats) on ``tokens``, read as consecutive windows of
    ``block_size`` (the tail shorter than a window is left out) and corrupted by ``corrupt(windows, generator)``
    -> (masked_ids, labels: the target id, -100 where nothing is predicted), the generator seeded by ``seed``:
    every call sees the same masks. Returns masked_accuracy and masked_loss."""
    num_windows = len(tokens) // block_size
    if num_windows == 0:
        raise ValueError(f"block_size: {block_size} is longer than the {len(tokens)} tokens")
    windows = tokens[:num_windows * block_size].view(num_windows, block_size)
    g = torch.Generator().manual_seed(seed)
    correct, total_nats, count = 0, 0.0, 0
    for start in range(0, num_windows, batch_size):
        masked, labels = corrupt(windows[start:start + batch_size].cpu(), g)
        logits = logits_fn(masked.to(device or tokens.device)).float()
        selected = labels.to(logits.device) != -100
        picked, target = logits[selected], labels.to(logits.device)[selected]
        total_nats += float(F.cross_entropy(picked, target, reduction="sum"))
        correct += int((picked.argmax(-1) == target).sum())
        count += int(selected.sum())
    if count == 0:
        raise ValueError("corrupt: selected no position to predict")
    return {"masked_accuracy": correct / count, "masked_loss": total_nats / count}


def evaluate_text_checkpoint(state: dict, data: Optional[str] = None, device: str = "auto",
                             out=None) -> dict[str, float]:
    """Print the metrics of a text method's checkpoint (``name: <float>`` lines, its baselines beside them) on
    the validation split of ``data`` (default: the corpus it was trained on). Returns them."""
    from fastssl.data import CharTokenizer, TextDataset, load_text
    from fastssl.eval.evaluate import load_method
    from fastssl.train.distributed import resolve_device

    out = out or sys.stdout
    dev = resolve_device(device)
    method = load_method(state).to(dev)
    data = data or state["config"]["data"]
    try:
        dataset = TextDataset(load_text(data), tokenizer=CharTokenizer(state["tokenizer_chars"]))
    except ValueError as exc:
        raise ValueError(f"data: {data!r} does not fit the checkpoint's vocabulary ({exc})") from None
    results = method.evaluate_text(dataset, device=dev)
    for name, value in results.items():
        print(f"{name}: {value:.4f}", file=out, flush=True)
    return results
