"""All-gather with gradients, for losses computed over the global batch of a torch.distributed job."""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """(rank, world_size), or (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: every rank's rows concatenated in rank order. Backward: the sum over ranks of the gradient
    w.r.t. the gathered tensor, sliced to this rank's rows (each rank's loss used every rank's rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from every rank into (world_size * n, ...), differentiably.

    Every rank must pass the same number of rows; a mismatch raises ValueError naming ``name``.
    """
    rank, world = distributed_world()
    if world == 1:
        return x
    rows = torch.tensor([x.shape[0]], device=x.device)
    all_rows = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(all_rows, rows)
    counts = [int(r) for r in all_rows]
    if len(set(counts)) != 1:
        raise ValueError(f"{name} must have the same number of rows on every rank, got {counts} (rank {rank})")
    return _GatherWithGrad.apply(x)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks, detached (for reporting the global loss)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
