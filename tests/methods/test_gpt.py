"""gpt on real text: the loss falls, resume is bit-exact, shapes, causality and gradients, sampling."""

import math

import pytest
import torch

from fastssl.cli import main
from fastssl.data import load_text_dataset
from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from tests.methods import text_suite
from tests.methods.text_suite import TINY_TEXT, assert_interrupted_resume_matches, losses

shakespeare_small = text_suite.shakespeare_small  # the fixture, shared by the text and image-text method tests

BLOCK = 32


def _config(data, out, **overrides):
    values = dict(method="gpt", data=str(data), out=str(out), backbone_args=TINY_TEXT,
                  method_args={"block_size": BLOCK}, batch_size=16, device="cpu", progress=False, log_every=1,
                  eval_at_end=False)
    values.update(overrides)
    return TrainConfig(**values)


def _model(data, **backbone_args):
    dataset = load_text_dataset(data)
    torch.manual_seed(0)
    model = METHODS["gpt"].build_text(dataset.tokenizer, {**TINY_TEXT, **backbone_args}, {"block_size": BLOCK})
    return model, dataset


def test_loss_is_finite_and_decreases(shakespeare_small, tmp_path):
    """From ln(vocabulary) ~ 4.2 nats, a few AdamW steps learn the character frequencies at least."""
    summary = Trainer(_config(shakespeare_small, tmp_path, max_steps=12, lr=1e-2, warmup_fraction=0.0)).run()
    assert summary["step"] == 12
    values = losses(tmp_path)
    assert len(values) == 12 and all(math.isfinite(v) for v in values)
    assert sum(values[-4:]) / 4 < sum(values[:4]) / 4 - 0.3, values


def test_resume_restores_the_whole_state(shakespeare_small, tmp_path, monkeypatch):
    """Dropout on: the resumed run also needs the checkpoint's RNG state, not only the step-seeded windows."""
    cfg = _config(shakespeare_small, tmp_path, max_steps=6, backbone_args={**TINY_TEXT, "dropout": 0.1})
    assert_interrupted_resume_matches(cfg, stop_at=3, monkeypatch=monkeypatch)


def test_shapes_of_windows_logits_and_targets(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    assert model.text_window() == BLOCK + 1
    windows = dataset.sample(5, model.text_window(), generator=torch.Generator().manual_seed(0))
    views = model.text_inputs(windows, torch.Generator())
    assert len(views) == 1 and views[0].shape == (5, BLOCK + 1) and views[0].dtype == torch.int64
    logits, targets = model(views)
    assert logits.shape == (5, BLOCK, dataset.tokenizer.vocab_size)
    assert torch.equal(targets, windows[:, 1:])


def test_loss_matches_an_independent_float64_formula(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    windows = dataset.sample(3, 17, generator=torch.Generator().manual_seed(1))  # irregular: 16 positions
    logits, targets = model([windows])
    log_probs = logits.double() - logits.double().exp().sum(-1, keepdim=True).log()
    expected = -log_probs.gather(-1, targets[..., None]).mean()
    assert torch.allclose(model.loss((logits, targets)).double(), expected, rtol=1e-5, atol=1e-6)


def test_causal_no_position_sees_the_future(shakespeare_small):
    """Changing the token at position k leaves the logits at every position before k unchanged, and changes k's."""
    model, dataset = _model(shakespeare_small)
    model.eval()
    tokens = dataset.sample(2, BLOCK, generator=torch.Generator().manual_seed(2))
    k = 19
    changed = tokens.clone()
    changed[:, k] = (changed[:, k] + 1) % dataset.tokenizer.pad_id
    with torch.no_grad():
        a, b = model.logits(tokens), model.logits(changed)
    assert torch.equal(a[:, :k], b[:, :k])
    assert not torch.allclose(a[:, k], b[:, k])


def test_gradients_reach_every_parameter(shakespeare_small):
    """Next-token prediction has no stop-gradient: every weight, the tied embedding included, gets a gradient."""
    model, dataset = _model(shakespeare_small)
    windows = dataset.sample(4, BLOCK + 1, generator=torch.Generator().manual_seed(3))
    model.loss(model([windows])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.backbone.lm_head.weight is model.backbone.token_embed.weight  # tied, as GPT-2


def test_generate_draws_characters_from_the_seed(shakespeare_small):
    dataset = load_text_dataset(shakespeare_small)
    model = METHODS["gpt"].build_text(dataset.tokenizer, TINY_TEXT, {"block_size": 8})
    prompt = dataset.tokenizer.encode("ROMEO:")
    a = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a.shape == (16,) and torch.equal(a, b) and torch.equal(a[:6], prompt)  # past 8 ids: the context is cut
    assert int(a.max()) < dataset.tokenizer.pad_id  # never [PAD] or [MASK]
    greedy = model.generate(prompt, 4, temperature=0.0)
    assert torch.equal(greedy, model.generate(prompt, 4, temperature=0.0, generator=torch.Generator().manual_seed(9)))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 3, temperature=-1.0)


def test_cli_sample_prints_the_prompt_and_its_continuation(shakespeare_small, tmp_path, capsys):
    Trainer(_config(shakespeare_small, tmp_path, max_steps=2)).run()
    capsys.readouterr()
    checkpoint = str(tmp_path / "last.pt")
    args = ["sample", "--checkpoint", checkpoint, "--prompt", "ROMEO:", "--length", "30", "--seed", "1",
            "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) == 6 + 30 + 1  # and print's newline
    assert main(args) == 0
    assert capsys.readouterr().out == first  # the seed fixes the text
    assert main(["sample", "--checkpoint", checkpoint, "--prompt", "\u00e9t\u00e9"]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_evaluate_reports_bits_per_char_against_the_unigram_baseline(shakespeare_small):
    model, dataset = _model(shakespeare_small)
    results = model.evaluate_text(dataset)
    assert set(results) == {"val_bits_per_char", "unigram_bits_per_char"}
    # An untrained model is near-uniform over the vocabulary: log2(67) ~ 6.1 bits, worse than the unigram model.
    assert results["val_bits_per_char"] > results["unigram_bits_per_char"] > 3.5


def test_bad_arguments_name_the_problem(shakespeare_small, tmp_path):
    with pytest.raises(ValueError, match="backbone_args"):
        _model(shakespeare_small, causal=False)
    with pytest.raises(ValueError, match="backbone_args"):
        _model(shakespeare_small, depth_multiplier=2)
    with pytest.raises(ValueError, match="method_args: temperature"):
        METHODS["gpt"].build_text(load_text_dataset(shakespeare_small).tokenizer, TINY_TEXT, {"temperature": 1.0})
