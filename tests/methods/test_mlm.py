"""mlm on real text: the loss falls, resume is bit-exact, the 80/10/10 masks and shapes, bidirectional attention,
gradients, and the evaluation's seeded masks."""

import math

import pytest
import torch

from fastssl.data import load_text_dataset
from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from tests.methods import text_suite
from tests.methods.text_suite import TINY_TEXT, assert_interrupted_resume_matches, losses

shakespeare_small = text_suite.shakespeare_small  # the fixture, shared by the text and image-text method tests

BLOCK = 32


def _config(data, out, **overrides):
    values = dict(method="mlm", data=str(data), out=str(out), backbone_args=TINY_TEXT,
                  method_args={"block_size": BLOCK}, batch_size=16, device="cpu", progress=False, log_every=1,
                  eval_at_end=False)
    values.update(overrides)
    return TrainConfig(**values)


def _model(data, **method_args):
    dataset = load_text_dataset(data)
    torch.manual_seed(0)
    model = METHODS["mlm"].build_text(dataset.tokenizer, TINY_TEXT, {"block_size": BLOCK, **method_args})
    return model, dataset


def test_loss_is_finite_and_decreases(shakespeare_small, tmp_path):
    summary = Trainer(_config(shakespeare_small, tmp_path, max_steps=12, lr=1e-2, warmup_fraction=0.0)).run()
    assert summary["step"] == 12
    values = losses(tmp_path)
    assert len(values) == 12 and all(math.isfinite(v) for v in values)
    assert sum(values[-4:]) / 4 < sum(values[:4]) / 4 - 0.3, values


def test_resume_restores_the_whole_state(shakespeare_small, tmp_path, monkeypatch):
    """The masks come from the step-seeded generator, the dropout from the checkpoint's RNG state."""
    cfg = _config(shakespeare_small, tmp_path, max_steps=6, backbone_args={**TINY_TEXT, "dropout": 0.1})
    assert_interrupted_resume_matches(cfg, stop_at=3, monkeypatch=monkeypatch)


def test_masks_select_15_percent_and_replace_them_80_10_10(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    tokenizer = dataset.tokenizer
    windows = dataset.sample(256, BLOCK, generator=torch.Generator().manual_seed(0))
    masked, labels = model.text_inputs(windows, torch.Generator().manual_seed(1))
    assert masked.shape == labels.shape == (256, BLOCK) and masked.dtype == labels.dtype == torch.int64
    selected = labels != -100
    n = int(selected.sum())  # ~1,229 of 8,192 positions
    assert abs(n / selected.numel() - 0.15) < 0.015
    assert torch.equal(labels[selected], windows[selected]) and torch.equal(masked[~selected], windows[~selected])
    as_mask = (masked[selected] == tokenizer.mask_id).double().mean()
    kept = (masked[selected] == windows[selected]).double().mean()  # 10% kept + the random draws that hit themselves
    assert abs(as_mask - 0.8) < 0.04 and abs(kept - 0.1) < 0.03
    assert int(masked.max()) <= tokenizer.mask_id and not (masked == tokenizer.pad_id).any()
    again = model.text_inputs(windows, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)  # a function of the generator


def test_forward_predicts_the_selected_positions_only(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    windows = dataset.sample(3, BLOCK, generator=torch.Generator().manual_seed(2))
    masked, labels = model.text_inputs(windows, torch.Generator().manual_seed(3))
    logits, targets = model([masked, labels])
    selected = labels != -100
    assert logits.shape == (int(selected.sum()), dataset.tokenizer.vocab_size)
    assert torch.equal(targets, windows[selected])
    # The loss against an independent float64 cross-entropy over the full logits at the selected positions.
    full = model.logits(masked).double()
    log_probs = full - full.exp().sum(-1, keepdim=True).log()
    expected = -log_probs[selected].gather(-1, targets[:, None]).mean()
    assert torch.allclose(model.loss((logits, targets)).double(), expected, rtol=1e-5, atol=1e-6)
    empty = model.loss((logits[:0], targets[:0]))
    assert empty.item() == 0.0  # no selected position: 0, not NaN


def test_attention_is_bidirectional(shakespeare_small):
    """A masked language model reads both sides: changing a later token changes an earlier position's logits."""
    model, dataset = _model(shakespeare_small)
    model.eval()
    tokens = dataset.sample(2, BLOCK, generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[:, 20] = (changed[:, 20] + 1) % dataset.tokenizer.pad_id
    with torch.no_grad():
        assert not torch.allclose(model.logits(tokens)[:, 5], model.logits(changed)[:, 5])


def test_gradients_reach_every_parameter(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    windows = dataset.sample(8, BLOCK, generator=torch.Generator().manual_seed(5))
    model.loss(model(model.text_inputs(windows, torch.Generator().manual_seed(6)))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_evaluate_uses_the_same_masks_every_time(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    first, second = model.evaluate_text(dataset), model.evaluate_text(dataset)
    assert first == second
    assert set(first) == {"masked_accuracy", "majority_accuracy", "masked_loss", "unigram_loss"}
    assert 0.1 < first["majority_accuracy"] < 0.25  # the space character
    assert first["masked_loss"] > first["unigram_loss"] > 2.0  # untrained: worse than the unigram model


def test_bad_arguments_name_the_problem(shakespeare_small):
    with pytest.raises(ValueError, match="mask_prob"):
        _model(shakespeare_small, mask_prob=0.0)
    dataset = load_text_dataset(shakespeare_small)
    with pytest.raises(ValueError, match="causal=False"):
        METHODS["mlm"].build_text(dataset.tokenizer, {**TINY_TEXT, "causal": True}, {"block_size": BLOCK})
