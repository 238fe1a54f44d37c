"""The text and zero-shot metrics against values computed by hand."""

import math

import pytest
import torch

from fastssl.eval.text import (
    causal_lm_bits_per_char,
    majority_accuracy,
    masked_lm_metrics,
    unigram_bits_per_char,
)
from fastssl.eval.zero_shot import zero_shot_accuracy


def _fixed(probs):
    """A 'model' that predicts the same distribution at every position."""
    log_p = torch.tensor(probs).log()
    return lambda tokens: log_p.expand(*tokens.shape, len(probs)).clone()


def test_unigram_bits_per_char_by_hand():
    train, val = torch.tensor([0, 0, 1]), torch.tensor([0, 1])
    # p(0) = 2/3, p(1) = 1/3: (log2(3/2) + log2(3)) / 2
    expected = (math.log2(3 / 2) + math.log2(3)) / 2
    assert math.isclose(unigram_bits_per_char(train, val, num_symbols=2, smoothing=0.0), expected, rel_tol=1e-12)
    # add-one over 3 symbols: counts 3, 2, 1 of 6: (log2(2) + log2(3)) / 2; the unseen symbol stays finite
    expected = (math.log2(2) + math.log2(3)) / 2
    assert math.isclose(unigram_bits_per_char(train, val, num_symbols=3), expected, rel_tol=1e-12)
    assert math.isclose(unigram_bits_per_char(train, torch.tensor([2]), num_symbols=3), math.log2(6), rel_tol=1e-12)
    with pytest.raises(ValueError, match="num_symbols"):
        unigram_bits_per_char(train, torch.tensor([5]), num_symbols=3)


@pytest.mark.parametrize("block_size", [1, 3, 4, 50])
def test_causal_bits_per_char_of_a_known_distribution(block_size):
    """p = (1/2, 1/4, 1/4) everywhere: every token after the first costs 1, 2 or 2 bits, whatever the windows."""
    tokens = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 2, 0, 1])
    predicted = tokens[1:].tolist()
    expected = sum({0: 1.0, 1: 2.0, 2: 2.0}[t] for t in predicted) / len(predicted)
    bits = causal_lm_bits_per_char(_fixed([0.5, 0.25, 0.25]), tokens, block_size, batch_size=2)
    assert math.isclose(bits, expected, rel_tol=1e-6)


def test_causal_bits_per_char_aligns_inputs_and_targets():
    """A model that puts probability 0.9 on 'the current token + 1 (mod 3)' on a sequence that follows that rule
    costs exactly -log2 0.9 per character; one position of misalignment would cost far more."""
    def next_is_plus_one(tokens):
        probs = torch.full((*tokens.shape, 3), 0.05)
        probs.scatter_(-1, ((tokens + 1) % 3)[..., None], 0.9)
        return probs.log()

    tokens = torch.arange(23) % 3
    bits = causal_lm_bits_per_char(next_is_plus_one, tokens, block_size=5)
    assert math.isclose(bits, -math.log2(0.9), rel_tol=1e-6)


def test_masked_metrics_of_a_known_distribution():
    """Selected positions 0 and 2 of every window of 4; p = (0.7, 0.2, 0.1): accuracy is the share of 0s among
    the targets, the loss their mean -ln p."""
    def every_other(windows, generator):
        labels = torch.full_like(windows, -100)
        labels[:, ::2] = windows[:, ::2]
        return windows.clone(), labels

    tokens = torch.tensor([0, 1, 2, 1, 1, 0, 0, 2, 2, 2, 0, 0, 1])  # 3 windows of 4, the last token left out
    targets = [0, 2, 1, 0, 2, 0]
    metrics = masked_lm_metrics(_fixed([0.7, 0.2, 0.1]), every_other, tokens, block_size=4, batch_size=2)
    assert math.isclose(metrics["masked_accuracy"], 3 / 6)
    cost = {0: -math.log(0.7), 1: -math.log(0.2), 2: -math.log(0.1)}
    assert math.isclose(metrics["masked_loss"], sum(cost[t] for t in targets) / 6, rel_tol=1e-6)
    with pytest.raises(ValueError, match="block_size"):
        masked_lm_metrics(_fixed([0.7, 0.2, 0.1]), every_other, tokens, block_size=20)


def test_majority_accuracy():
    assert majority_accuracy(torch.tensor([3, 3, 1, 3, 0]), torch.tensor([3, 1, 3, 2])) == 0.5


def test_zero_shot_accuracy_by_hand():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    images = torch.tensor([[2.0, 0.1], [0.1, 5.0], [-3.0, 1.0], [0.0, -1.0]])  # nearest: 0, 1, 2, then 0 or 2
    labels = torch.tensor([0, 1, 2, 1])
    assert zero_shot_accuracy(images, labels, classes) == 0.75
    assert zero_shot_accuracy(images * 10, labels, classes * 0.1) == 0.75  # cosine: the scale does not matter
    with pytest.raises(ValueError, match="share D"):
        zero_shot_accuracy(images, labels, torch.ones(3, 5))
