"""Shared checks of a method under the real Trainer (CPU, tiny backbone, real images): the loss falls, and a run
resumed from a mid-run checkpoint lands on exactly the state of the run that never stopped."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

import torch

from fastssl.train import TrainConfig, Trainer
from fastssl.train.checkpoint import load_checkpoint

TINY_RESNET = dict(backbone="resnet18", backbone_args={"width": 0.125})
TINY_VIT = dict(backbone="vit_tiny", backbone_args={"dim": 32, "depth": 2, "num_heads": 2})


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


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def assert_resume_is_exact(data: Path, straight: Path, resumed: Path, method: str, steps: int,
                           **overrides) -> None:
    """Resume from the straight run's half-way checkpoint in a fresh folder and finish: the method state
    (weights, buffers, BN statistics, seeds kept as extra state) and the optimizer state equal the straight
    run's bit for bit."""
    resumed.mkdir(parents=True)
    shutil.copy(straight / f"step_{steps // 2:07d}.pt", resumed / "last.pt")
    cfg = tiny_config(data, resumed, method, max_steps=steps, resume=True, **overrides)
    assert Trainer(cfg).run()["step"] == steps
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == steps
    assert a["method_state"].keys() == b["method_state"].keys()
    for key, value in a["method_state"].items():
        assert _same(value, b["method_state"][key]), f"{key} differs after resume"
    assert _same(a["optimizer"]["state"], b["optimizer"]["state"]), "optimizer state differs after resume"
    assert a["horizon"] == b["horizon"]


def trainable_grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in module.named_parameters() if p.requires_grad}


def assert_every_parameter_learns(module: torch.nn.Module) -> None:
    """After one backward: every trainable parameter has a finite, non-zero gradient."""
    for name, grad in trainable_grads(module).items():
        assert grad is not None, f"{name} got no gradient"
        assert torch.isfinite(grad).all(), f"{name} has a non-finite gradient"
        assert grad.abs().sum() > 0, f"{name} has an all-zero gradient"
