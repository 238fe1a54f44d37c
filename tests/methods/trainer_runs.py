"""Shared checks of a method under the real Trainer (CPU, tiny backbone, real images): the loss falls, and a run
resumed from a mid-run checkpoint lands on exactly the state of the run that never stopped. Also the pieces the
image and text suites (image_ssl_runs.py, text_suite.py) and conftest.py share: the real data's folder, a decoded
CIFAR-10 slice, the losses of a run, the exact comparison of two checkpoints."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastssl.train import TrainConfig, Trainer
from fastssl.train.checkpoint import load_checkpoint

TINY_RESNET = dict(backbone="resnet18", backbone_args={"width": 0.125})
TINY_VIT = dict(backbone="vit_tiny", backbone_args={"dim": 32, "depth": 2, "num_heads": 2})


def shared_data() -> Path:
    return Path(os.environ.get("FASTSSL_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


def cifar_npz(path: Path, pick, classes: bool = False) -> Path:
    """Decode the real CIFAR-10 training images that ``pick(labels_of_the_training_split) -> indices`` chooses
    into ``path`` (an .npz with x, y and, with ``classes``, the class names); skips the test where the data is
    missing."""
    from PIL import Image

    source = shared_data() / "cifar10" / "cifar10_all_jpeg.npz"
    if not source.exists():
        pytest.skip(f"{source} not found (set FASTSSL_DATA)")
    with np.load(source) as f:
        jpeg, offsets, labels, is_train = f["jpeg_bytes"], f["offsets"], f["labels"], f["is_train"]
        names = f["classes"] if classes else None
    train = np.flatnonzero(is_train)
    index = train[pick(labels[train])]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in index])
    extra = {"classes": names} if classes else {}
    np.savez(path, x=images, y=labels[index].astype(np.int64), **extra)
    return path


def tiny_config(data: Path, out: Path, method: str, **overrides) -> TrainConfig:
    values = dict(TINY_RESNET, method=method, data=str(data), out=str(out), batch_size=16, device="cpu",
                  progress=False, log_every=1, eval_at_end=False, warmup_fraction=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def losses(out: Path) -> list[float]:
    with open(out / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def straight_run(data: Path, out: Path, method: str, steps: int, **overrides) -> Path:
    """``steps`` steps with a kept checkpoint at the half-way step; returns ``out``, where printed.txt holds what
    the Trainer printed."""
    cfg = tiny_config(data, out, method, max_steps=steps, checkpoint_every=steps // 2, keep_checkpoints=True,
                      **overrides)
    printed = io.StringIO()
    assert Trainer(cfg, out_stream=printed).run()["step"] == steps
    (out / "printed.txt").write_text(printed.getvalue())
    return out


def assert_loss_decreases(out: Path) -> None:
    values = losses(out)
    assert all(math.isfinite(v) for v in values), values
    quarter = max(1, len(values) // 4)
    assert sum(values[-quarter:]) / quarter < sum(values[:quarter]) / quarter, values


def same(a, b) -> bool:
    """Exactly equal: tensors of the same dtype and values, dicts key by key, anything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_checkpoints_match(first: Path, second: Path, steps: int) -> dict:
    """Two checkpoints of ``steps`` steps hold the same horizon, the same whole method state (weights, buffers,
    EMA targets, centres, queues, seeds kept as extra state) and optimizer state, bit for bit. Returns the first."""
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert a["step"] == b["step"] == steps and a["horizon"] == b["horizon"]
    assert a["method_state"].keys() == b["method_state"].keys()
    for key, value in a["method_state"].items():
        assert same(value, b["method_state"][key]), f"{key} differs after resume"
    assert same(a["optimizer"]["state"], b["optimizer"]["state"]), "optimizer state differs after resume"
    return a


def assert_resume_is_exact(data: Path, straight: Path, resumed: Path, method: str, steps: int,
                           **overrides) -> None:
    """Resume from the straight run's half-way checkpoint in a fresh folder and finish: the method state
    (weights, buffers, BN statistics, seeds kept as extra state) and the optimizer state equal the straight
    run's bit for bit."""
    resumed.mkdir(parents=True)
    shutil.copy(straight / f"step_{steps // 2:07d}.pt", resumed / "last.pt")
    cfg = tiny_config(data, resumed, method, max_steps=steps, resume=True, **overrides)
    assert Trainer(cfg).run()["step"] == steps
    assert_checkpoints_match(straight / "last.pt", resumed / "last.pt", steps)


def trainable_grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in module.named_parameters() if p.requires_grad}


def assert_every_parameter_learns(module: torch.nn.Module) -> None:
    """After one backward: every trainable parameter has a finite, non-zero gradient."""
    for name, grad in trainable_grads(module).items():
        assert grad is not None, f"{name} got no gradient"
        assert torch.isfinite(grad).all(), f"{name} has a non-finite gradient"
        assert grad.abs().sum() > 0, f"{name} has an all-zero gradient"
