"""torch.distributed set-up for `torchrun --nproc_per_node=K -m fastssl pretrain ...` (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR);
    a single process without those variables runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
        started = True
    return DistInfo(rank, world, local_rank, target, started)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
