"""clip on real CIFAR-10 images with label-derived captions: the loss falls, resume is bit-exact, captions and shapes,
gradients and the logit scale, zero-shot evaluation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastssl.eval.evaluate import evaluate_checkpoint
from fastssl.methods import METHODS
from fastssl.methods.clip import TEMPLATES
from fastssl.train import TrainConfig, Trainer
from fastssl.train.distributed import DistInfo
from tests.methods import text_suite
from tests.methods.text_suite import TINY_RESNET, assert_interrupted_resume_matches, losses

cifar_named = text_suite.cifar_named  # the fixture, shared by the text and image-text method tests

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SMALL_ARGS = {"embed_dim": 32, "text_dim": 32, "text_depth": 1, "text_heads": 2}


def _config(data, out, **overrides):
    values = dict(method="clip", data=str(data), out=str(out), backbone="resnet18", backbone_args=TINY_RESNET,
                  method_args=SMALL_ARGS, batch_size=32, device="cpu", progress=False, log_every=1,
                  eval_at_end=False)
    values.update(overrides)
    return TrainConfig(**values)


def _model(**method_args):
    torch.manual_seed(0)
    return METHODS["clip"].build("resnet18", TINY_RESNET, {**SMALL_ARGS, **method_args}, in_channels=3,
                                 image_size=(32, 32))


def _built_trainer(cfg):
    trainer = Trainer(cfg)
    trainer.dist = DistInfo()
    trainer._build(trainer.dist)
    return trainer


def test_loss_is_finite_and_decreases(cifar_named, tmp_path):
    """At initialisation the embeddings of a batch are all alike (cosine ~0.9 on both sides), the positives no more
    than the rest, and the loss starts above ln(32) = 3.47; a dozen steps bring it to ln(32). Going below, class
    by class, takes this tiny model ~100 steps (the 2- and 4-minute CIFAR-10 runs show it through zero-shot
    accuracy), too long for a unit test."""
    summary = Trainer(_config(cifar_named, tmp_path, max_steps=12, lr=1e-3, warmup_fraction=0.0)).run()
    assert summary["step"] == 12
    values = losses(tmp_path)
    assert len(values) == 12 and all(math.isfinite(v) for v in values)
    assert sum(values[-4:]) / 4 < sum(values[:4]) / 4 - 0.05, values
    assert values[0] > math.log(32) > min(values) - 0.05


def test_resume_restores_the_whole_state(cifar_named, tmp_path, monkeypatch):
    """Weights, BatchNorm statistics, the learnable temperature, AdamW's moments; captions from the step's seed."""
    state = assert_interrupted_resume_matches(_config(cifar_named, tmp_path, max_steps=4, batch_size=16), stop_at=2,
                                              monkeypatch=monkeypatch)
    assert "logit_scale" in state["method_state"]


def test_batches_hold_one_view_and_the_captions_of_its_labels(cifar_named, tmp_path):
    trainer = _built_trainer(_config(cifar_named, tmp_path))
    method = trainer.method
    images, (captions,) = trainer._load(0, 0)
    assert images.shape == (32, 32, 32, 3) and images.dtype == torch.uint8
    assert captions.shape == (32, method.context_length) and captions.dtype == torch.int64
    labels = trainer.dataset.labels[trainer.order.global_indices(0, 0)]
    texts = [method.tokenizer.decode(row[row != method.tokenizer.pad_id]) for row in captions]
    for text, label in zip(texts, labels):
        assert text in {t.format(CLASSES[label]) for t in TEMPLATES}, text
    assert len({text.replace(CLASSES[label], "{}") for text, label in zip(texts, labels)}) > 5  # per-image templates
    again = trainer._load(0, 0)[1][0]
    assert torch.equal(again, captions) and not torch.equal(trainer._load(1, 0)[1][0], captions)

    views = trainer._views(trainer._to_device(trainer._load(0, 0)), 0, 0)
    assert len(views) == 2 and views[0].shape == (32, 3, 32, 32) and views[0].dtype == torch.float32
    image, text, scale = method(views)
    assert image.shape == text.shape == (32, SMALL_ARGS["embed_dim"]) and scale.shape == ()


def test_loss_matches_an_independent_float64_formula():
    model = _model()
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(13, 7, generator=g), torch.randn(13, 7, generator=g)
    scale = torch.tensor(14.3)
    i, t = F.normalize(image.double(), dim=1), F.normalize(text.double(), dim=1)
    logits = scale.double() * i @ t.T
    log_i2t = logits - logits.exp().sum(1, keepdim=True).log()
    log_t2i = logits.T - logits.T.exp().sum(1, keepdim=True).log()
    expected = -(log_i2t.diagonal().mean() + log_t2i.diagonal().mean()) / 2
    assert torch.allclose(model.loss((image, text, scale)).double(), expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_both_encoders_and_the_temperature(cifar_named, tmp_path):
    """CLIP has no stop-gradient: the image backbone, the text Transformer, both projections and the logit scale
    all learn from the one contrastive loss."""
    trainer = _built_trainer(_config(cifar_named, tmp_path))
    method = trainer.method
    views = trainer._views(trainer._to_device(trainer._load(0, 0)), 0, 0)
    method.loss(method(views)).backward()
    for name, p in method.named_parameters():
        assert p.grad is not None, name
        if not name.startswith("text_encoder.pos_embed"):  # positions past the longest caption get none
            assert p.grad.abs().sum() > 0, name
    assert method.logit_scale.grad.abs() > 0


def test_logit_scale_starts_at_1_over_007_and_is_clipped_at_100():
    model = _model()
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(250.0))
    model.after_step(1, 10)
    assert math.isclose(model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)
    assert math.isclose(model.logs()["logit_scale"], 100.0, rel_tol=1e-5)


def test_class_embeddings_average_the_templates():
    model = _model()  # in training mode: class_embeddings evaluates in eval mode, then restores it
    embeddings = model.class_embeddings(CLASSES[:3])
    assert embeddings.shape == (3, SMALL_ARGS["embed_dim"]) and model.training
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    model.eval()
    with torch.no_grad():
        cat = F.normalize(model.encode_text(model.tokenize([t.format("cat") for t in TEMPLATES])), dim=1)
    assert torch.allclose(model.class_embeddings(["cat"])[0], F.normalize(cat.mean(0), dim=0), atol=1e-6)


def test_eval_prints_knn_and_zero_shot_accuracy(cifar_named, tmp_path):
    Trainer(_config(cifar_named, tmp_path, max_steps=2)).run()
    lines = []

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    results = evaluate_checkpoint(tmp_path / "last.pt", device="cpu", linear=False, plot=False, out=Out())
    assert set(results) == {"knn_top1", "feature_erank", "zero_shot_top1"}
    assert 0.0 <= results["zero_shot_top1"] <= 1.0
    assert 1.0 <= results["feature_erank"] <= 64  # at most the width-0.125 ResNet-18 feature dimension
    assert any(line.startswith("zero_shot_top1: ") for line in lines)
    assert any(line.startswith("feature_erank: ") for line in lines)


def test_data_without_class_names_is_refused(cifar_named, tmp_path):
    with np.load(cifar_named) as f:
        np.savez(tmp_path / "unnamed.npz", x=f["x"], y=f["y"])
    with pytest.raises(ValueError, match="class names"):
        Trainer(_config(tmp_path / "unnamed.npz", tmp_path / "out", max_steps=1)).run()
    with pytest.raises(ValueError, match="caption"):
        _model().tokenize(["a photo of a caf\u00e9."])
