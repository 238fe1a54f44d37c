"""Shared checks of the image methods (simsiam, barlow_twins, vicreg, moco_v3, dino) under the real Trainer on CPU
with real CIFAR-10 images and tiny networks: the loss falls; a run resumed from a mid-run checkpoint ends bit for
bit where the run that never stopped ends; real views through the method's own view pipeline."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch

from fastssl.data import view_pipeline
from fastssl.methods import METHODS
from fastssl.train import TrainConfig, Trainer
from tests.methods.trainer_runs import TINY_RESNET, TINY_VIT, assert_checkpoints_match, losses
# Heads a few hundred wide: the tests check the mechanics, the paper's widths only cost time here.
SMALL = {
    "simsiam": dict(TINY_RESNET, method_args={"proj_hidden_dim": 128, "proj_dim": 128, "pred_hidden_dim": 32}),
    "barlow_twins": dict(TINY_RESNET, method_args={"proj_hidden_dim": 128, "proj_dim": 128}),
    "vicreg": dict(TINY_RESNET, method_args={"proj_hidden_dim": 128, "proj_dim": 128}),
    "moco_v3": dict(TINY_VIT, method_args={"proj_hidden_dim": 128, "proj_dim": 64, "pred_hidden_dim": 128}),
    "dino": dict(TINY_RESNET, method_args={"out_dim": 256, "hidden_dim": 128, "bottleneck_dim": 64},
                 view_args={"local_crops": 2}),
}


def tiny_config(data: Path, out: Path, method: str, **overrides) -> TrainConfig:
    values = dict(SMALL[method], method=method, data=str(data), out=str(out), batch_size=32, device="cpu",
                  progress=False, log_every=1, eval_at_end=False, warmup_fraction=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def build_small(method: str) -> torch.nn.Module:
    """The method with its tiny test backbone and heads, for 32 x 32 RGB images, seeded."""
    spec = SMALL[method]
    torch.manual_seed(0)
    return METHODS[method].build(spec["backbone"], spec["backbone_args"], spec["method_args"], 3, (32, 32))


def real_views(data: Path, method: str, batch_size: int = 16, **view_args) -> list[torch.Tensor]:
    """Views of the first ``batch_size`` real images through the method's own small-image view pipeline."""
    with np.load(data) as f:
        images = torch.from_numpy(f["x"][:batch_size])
    args = {"size": (32, 32), **SMALL[method].get("view_args", {}), **view_args}
    pipe = view_pipeline(METHODS[method].small_preset, **args)
    return pipe(images, generator=torch.Generator().manual_seed(0), backend="reference")


def run_and_check_loss_falls(data: Path, out: Path, method: str, steps: int, **overrides) -> list[float]:
    """``steps`` Trainer steps; every loss is finite and the last quarter's mean is below the first quarter's."""
    assert Trainer(tiny_config(data, out, method, max_steps=steps, **overrides)).run()["step"] == steps
    values = losses(out)
    assert len(values) == steps and all(math.isfinite(v) for v in values), values
    quarter = max(1, steps // 4)
    assert sum(values[-quarter:]) / quarter < sum(values[:quarter]) / quarter, values
    return values


def assert_resume_is_exact(data: Path, tmp_path: Path, method: str, steps: int, **overrides) -> dict:
    """A straight run of ``steps`` steps (keeping its half-way checkpoint) against that checkpoint resumed in a fresh
    folder: the whole method state (weights, EMA targets, centres, BN statistics) and the optimizer state end bit for
    bit equal. Returns the final method state."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg = tiny_config(data, straight, method, max_steps=steps, checkpoint_every=steps // 2, keep_checkpoints=True,
                      **overrides)
    assert Trainer(cfg).run()["step"] == steps
    resumed.mkdir()
    shutil.copy(straight / f"step_{steps // 2:07d}.pt", resumed / "last.pt")
    assert Trainer(tiny_config(data, resumed, method, max_steps=steps, resume=True, **overrides)).run()["step"] == steps
    return assert_checkpoints_match(straight / "last.pt", resumed / "last.pt", steps)["method_state"]


def assert_gradients(module: torch.nn.Module, *, none: tuple[str, ...] = ()) -> None:
    """After one backward: parameters under the prefixes ``none`` (stop-gradients, EMA targets, frozen layers)
    have no gradient; every other parameter has a finite gradient that is not all zero."""
    for name, p in module.named_parameters():
        if name.startswith(none):
            assert p.grad is None or not p.grad.any(), f"{name} got a gradient"
        else:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
