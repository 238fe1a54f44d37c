"""Checkpoints that survive a crash: written to a temporary file, fsynced, then renamed over the old one.

A checkpoint holds everything a bit-exact resume needs: the method's state (backbone, heads, EMA targets, queues,
centres), the optimizer, the AMP scaler, the step and the schedule horizon, the RNG states, and the run's config.
The data position is the step itself: batches and augmentation parameters are drawn from generators seeded by
(seed, epoch) and (seed, step), so nothing else has to be stored to continue exactly where the run stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` so that a crash at any moment leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable only once the directory is synced
    finally:
        os.close(dir_fd)


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path}: not a fastssl checkpoint (format {FORMAT_VERSION})")
    return checkpoint
