"""The engine's text path: batches drawn from the step's seed, split over ranks like image batches, resumed
bit-exactly; the method's default data and batch; the CLI end to end with the end-of-run evaluation."""

import re

import pytest
import torch

from fastssl.cli import main
from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from fastssl.train.distributed import DistInfo
from tests.methods import text_suite
from tests.methods.text_suite import TINY_TEXT, assert_interrupted_resume_matches

shakespeare_small = text_suite.shakespeare_small  # the fixture, shared by the text and image-text method tests


def _config(data, out, method="mlm", **overrides):
    values = dict(method=method, data=str(data), out=str(out), backbone_args=TINY_TEXT,
                  method_args={"block_size": 16}, batch_size=8, device="cpu", progress=False, log_every=1,
                  eval_at_end=False)
    values.update(overrides)
    return TrainConfig(**values)


def _built(cfg, dist=None):
    trainer = Trainer(cfg)
    trainer.dist = dist or DistInfo()
    trainer._build(trainer.dist)
    return trainer


def test_text_batches_are_a_function_of_seed_step_and_micro_batch(shakespeare_small, tmp_path):
    trainer = _built(_config(shakespeare_small, tmp_path, grad_accum=2))
    masked, labels = trainer._load(3, 1)
    assert masked.shape == labels.shape == (4, 16)  # a micro-batch: 8 / grad_accum 2
    again = trainer._load(3, 1)
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(trainer._load(3, 0)[0], masked) and not torch.equal(trainer._load(4, 1)[0], masked)
    other_seed = _built(_config(shakespeare_small, tmp_path, grad_accum=2, seed=1))
    assert not torch.equal(other_seed._load(3, 1)[0], masked)


def test_ranks_take_their_slice_of_the_one_global_batch(shakespeare_small, tmp_path):
    """As for images: two processes draw the windows and masks of the global micro-batch and each keeps its half,
    so they train on exactly what one process would."""
    whole = _built(_config(shakespeare_small, tmp_path))._load(2, 0)
    halves = [_built(_config(shakespeare_small, tmp_path), DistInfo(rank=r, world=2))._load(2, 0) for r in (0, 1)]
    for i in range(2):
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), whole[i])


@pytest.mark.parametrize("method", ["gpt", "mlm"])
def test_text_resume_is_bit_exact_with_grad_accumulation(method, shakespeare_small, tmp_path, monkeypatch):
    cfg = _config(shakespeare_small, tmp_path, method, max_steps=4, grad_accum=2,
                  backbone_args={**TINY_TEXT, "dropout": 0.1})
    assert_interrupted_resume_matches(cfg, stop_at=2, monkeypatch=monkeypatch)


def test_the_method_chooses_the_data_and_batch(shakespeare_small, tmp_path):
    # shakespeare_small skips the test where the shared data (the named "shakespeare") is missing.
    trainer = _built(TrainConfig(method="gpt", out=str(tmp_path), device="cpu", progress=False))
    assert trainer.cfg.data == "shakespeare" and trainer.cfg.batch_size == METHODS["gpt"].defaults["batch_size"]
    assert trainer.optimizer_name == "adamw" and trainer.clip_grad == 1.0
    assert trainer.base_lr == METHODS["gpt"].defaults["lr"]  # lr_scaling "none": not scaled with the batch
    assert trainer.window == METHODS["gpt"].options["block_size"] + 1
    assert all(METHODS[name].default_data == "cifar10" for name in ("simclr", "moco_v2", "byol", "clip"))


def test_image_options_are_refused_for_text_methods(shakespeare_small, tmp_path):
    with pytest.raises(ValueError, match="backbone: gpt is a text method"):
        Trainer(_config(shakespeare_small, tmp_path, "gpt", backbone="resnet18")).run()
    with pytest.raises(ValueError, match="view_args"):
        Trainer(_config(shakespeare_small, tmp_path, "gpt", view_args={"size": 16})).run()
    with pytest.raises(ValueError, match="is a text corpus"):
        Trainer(TrainConfig(method="simclr", data=str(shakespeare_small), out=str(tmp_path), device="cpu")).run()


def test_cli_pretrains_on_a_text_file_and_evaluates_it(shakespeare_small, tmp_path, capsys):
    args = ["pretrain", "--method", "gpt", "--data", str(shakespeare_small), "--out", str(tmp_path), "--max-steps",
            "3", "--device", "cpu", "--no-progress", "--batch-size", "8", "--method-arg", "block_size=16"]
    for key, value in TINY_TEXT.items():
        args += ["--backbone-arg", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    bits = float(re.search(r"^val_bits_per_char: ([0-9.]+)$", out, re.M).group(1))
    unigram = float(re.search(r"^unigram_bits_per_char: ([0-9.]+)$", out, re.M).group(1))
    assert bits > 0 and 4.0 < unigram < 5.5
    assert main(["eval", "--checkpoint", str(tmp_path / "last.pt"), "--device", "cpu"]) == 0
    assert f"val_bits_per_char: {bits:.4f}" in capsys.readouterr().out
    # Fine-tuning and the method benchmark are image tools: a text checkpoint or method gets a clear refusal.
    assert main(["finetune", "--checkpoint", str(tmp_path / "last.pt"), "--label-fraction", "0.1"]) != 0
    assert "gpt is a text method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--method", "mlm"])
    assert "mlm is a text method" in capsys.readouterr().err
