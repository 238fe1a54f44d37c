"""Fixtures and helpers of the text and image-text method tests (gpt, mlm, clip): small slices of the real data
and an interrupted-then-resumed Trainer run. Test modules import the fixtures they use from here."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from fastssl.train.checkpoint import load_checkpoint

TINY_TEXT = {"dim": 32, "depth": 1, "num_heads": 2}  # a TextTransformer that trains in milliseconds a step
TINY_RESNET = {"width": 0.125}


def shared_data() -> Path:
    return Path(os.environ.get("FASTSSL_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


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
    from PIL import Image

    source = shared_data() / "cifar10" / "cifar10_all_jpeg.npz"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        jpeg, offsets, labels, is_train = f["jpeg_bytes"], f["offsets"], f["labels"], f["is_train"]
        classes = f["classes"]
    index = np.stack([np.flatnonzero(is_train & (labels == c))[:32] for c in range(10)], axis=1).reshape(-1)
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in index])
    path = tmp_path_factory.mktemp("data") / "cifar320_named.npz"
    np.savez(path, x=images, y=labels[index].astype(np.int64), classes=classes)
    return path


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

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == cfg.max_steps
    assert a["method_state"].keys() == b["method_state"].keys()
    for key, value in a["method_state"].items():
        assert torch.equal(value, b["method_state"][key]), f"{key} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    return a


def losses(out: Path) -> list[float]:
    import csv

    return [float(r["loss"]) for r in csv.DictReader(open(Path(out) / "metrics.csv"))]
