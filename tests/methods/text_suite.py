"""Fixtures and helpers of the text and image-text method tests (gpt, mlm, clip): small slices of the real data
and an interrupted-then-resumed Trainer run. Test modules import the fixtures they use from here."""

from pathlib import Path

import numpy as np
import pytest

from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from fastssl.train.checkpoint import load_checkpoint
from tests.methods.trainer_runs import assert_checkpoints_match, cifar_npz, losses, shared_data  # noqa: F401

TINY_TEXT = {"dim": 32, "depth": 1, "num_heads": 2}  # a TextTransformer that trains in milliseconds a step
TINY_RESNET = {"width": 0.125}


@pytest.fixture(scope="session")
def shakespeare_small(tmp_path_factory) -> Path:
    """The first 40,000 characters of the real tiny-Shakespeare file (36,000 train / 4,000 validation)."""
    source = shared_data() / "text" / "tinyshakespeare_input.txt"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    path = tmp_path_factory.mktemp("text") / "shakespeare40k.txt"
    path.write_text(source.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cifar_named(tmp_path_factory) -> Path:
    """320 real CIFAR-10 training images, 32 of each class, with labels AND class names (x, y, classes), as a small
    .npz: its fixed 80/20 split gives 256 "train" and 64 "test" images. (The shared file is sorted by class: its
    first few hundred training images are all airplanes.)"""
    def per_class(labels):
        return np.stack([np.flatnonzero(labels == c)[:32] for c in range(10)], axis=1).reshape(-1)

    return cifar_npz(tmp_path_factory.mktemp("data") / "cifar320_named.npz", per_class, classes=True)


class Interrupted(Exception):
    """Raised by the stopping copy of a method at a chosen step, after that step's checkpoint."""


def assert_interrupted_resume_matches(cfg: TrainConfig, stop_at: int, monkeypatch) -> dict:
    """Run ``cfg`` straight; run it again, stopped by an exception in the forward of step ``stop_at`` (the
    checkpoint of step ``stop_at`` written), then resumed in a fresh Trainer. The final method state (weights,
    buffers, EMA targets, queues, temperatures) and optimizer state must be identical. Returns the checkpoint."""
    straight = Path(cfg.out) / "straight"
    Trainer(cfg.replace(out=str(straight), checkpoint_every=stop_at)).run()

    original = METHODS[cfg.method]

    class Stopping(original):
        def forward(self, views, step=0, horizon=1):
            if step == stop_at:
                raise Interrupted
            return super().forward(views, step, horizon)

    resumed = Path(cfg.out) / "resumed"
    monkeypatch.setitem(METHODS, cfg.method, Stopping)
    with pytest.raises(Interrupted):
        Trainer(cfg.replace(out=str(resumed), checkpoint_every=stop_at)).run()
    monkeypatch.setitem(METHODS, cfg.method, original)
    assert load_checkpoint(resumed / "last.pt")["step"] == stop_at
    Trainer(cfg.replace(out=str(resumed), checkpoint_every=stop_at, resume=True)).run()

    return assert_checkpoints_match(straight / "last.pt", resumed / "last.pt", cfg.max_steps)
