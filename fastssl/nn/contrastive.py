"""Drop-in loss modules over the fused contrastive ops.

``NTXentLoss`` takes lightly's call ``loss(out0, out1)``, ``ClipLoss`` open_clip's call
``loss(image_features, text_features, logit_scale)``, and ``MoCoLoss`` keeps MoCo's FIFO queue of negatives.

With ``gather_distributed=True`` each rank's rows are all-gathered (with gradients) so that every rank's queries
see the negatives of the global batch. Each rank computes the loss of its own queries only (1/world of the work),
and the returned value is the global loss. Gradients follow the DistributedDataParallel convention: DDP averages
parameter gradients over ranks, and with that average they equal those of one process on the global batch
(tests/nn/test_distributed.py proves it with 2 gloo processes).
"""

from __future__ import annotations

import torch
from torch import nn

from fastssl import _dispatch
from fastssl.nn.gather import distributed_world, gather_with_grad, mean_over_ranks
from fastssl.ops.info_nce import (
    _check_embeddings,
    _check_logit_scale,
    _check_temperature,
    _scale_tensor,
    clip_loss,
    clip_loss_core,
    info_nce_core,
    nt_xent,
)


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent loss (Chen et al., 2020), a drop-in for ``lightly.loss.NTXentLoss``.

    Args:
        temperature: tau > 0; SimCLR uses 0.5 at batch 4096 (0.1 to 0.5 in its sweeps).
        gather_distributed: use every rank's embeddings as negatives in a torch.distributed job.
        backend: passed to :func:`fastssl.nt_xent`.

    Shapes: ``out0``, ``out1``: (batch_size, dim) -> 0-d loss. Example::

        >>> import torch
        >>> from fastssl.nn import NTXentLoss
        >>> model = torch.nn.Linear(32, 16)
        >>> x0, x1 = torch.randn(64, 32), torch.randn(64, 32)     # two views of 64 samples
        >>> criterion = NTXentLoss(temperature=0.5)
        >>> loss = criterion(model(x0), model(x1))
        >>> loss.backward()
        >>> model.weight.grad.shape
        torch.Size([16, 32])
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False, backend: str = "auto"):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        rank, world = distributed_world()
        if not self.gather_distributed or world == 1:
            return nt_xent(out0, out1, self.temperature, normalize=True, backend=self.backend)
        _check_embeddings(out0=out0, out1=out1)
        if out0.shape[0] != out1.shape[0]:
            raise ValueError(f"out0 and out1 must have the same batch size, got {out0.shape[0]} and {out1.shape[0]}")
        backend = _dispatch.select("nt_xent", self.backend, out0.device, out0.dtype, out0.shape[1])
        n = out0.shape[0]
        # Raw rows travel; the op normalises queries and gathered keys alike on the fly.
        keys = torch.cat([gather_with_grad(out0, "out0"), gather_with_grad(out1, "out1")])  # (2 * world * n, D)
        global_n = world * n
        local = rank * n + torch.arange(n, device=out0.device)  # global row of this rank's view-0 rows
        pos = torch.cat([local + global_n, local])
        exclude = torch.cat([local, local + global_n])
        loss = info_nce_core(torch.cat([out0, out1]), keys, _scale_tensor(1.0 / self.temperature, out0),
                             pos, exclude, True, backend)
        return loss + (mean_over_ranks(loss) - loss.detach())


class ClipLoss(nn.Module):
    """CLIP's symmetric loss (Radford et al., 2021), a drop-in for ``open_clip.ClipLoss``.

    Call as ``loss(image_features, text_features, logit_scale)`` with (batch_size, dim) features and
    ``logit_scale`` the exponentiated learnable scale (0-d tensor; receives a gradient). Features are
    L2-normalised (a no-op for open_clip's already normalised features, up to rounding). Example::

        >>> import math, torch
        >>> from fastssl.nn import ClipLoss
        >>> logit_scale = torch.tensor(math.log(1 / 0.07)).exp().requires_grad_()  # CLIP's initial scale
        >>> loss = ClipLoss()(torch.randn(64, 512), torch.randn(64, 512), logit_scale)
        >>> loss.backward()
        >>> logit_scale.grad.shape
        torch.Size([])
    """

    def __init__(self, gather_distributed: bool = False, normalize: bool = True, backend: str = "auto"):
        super().__init__()
        self.gather_distributed = gather_distributed
        self.normalize = normalize
        self.backend = backend

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
        rank, world = distributed_world()
        if not self.gather_distributed or world == 1:
            return clip_loss(image_features, text_features, logit_scale, self.normalize, self.backend)
        _check_embeddings(image_features=image_features, text_features=text_features)
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"image_features and text_features must have the same batch size, got "
                f"{image_features.shape[0]} and {text_features.shape[0]}"
            )
        scale = _check_logit_scale(logit_scale, image_features.device)
        backend = _dispatch.select("clip_loss", self.backend, image_features.device,
                                   image_features.dtype, image_features.shape[1])
        n = image_features.shape[0]
        pos = rank * n + torch.arange(n, device=image_features.device)
        loss = clip_loss_core(
            image_features.contiguous(), text_features.contiguous(), scale, pos, self.normalize, backend,
            image_keys=gather_with_grad(text_features, "text_features"),
            text_keys=gather_with_grad(image_features, "image_features"),
        )
        return loss + (mean_over_ranks(loss) - loss.detach())


class MoCoLoss(nn.Module):
    """MoCo's InfoNCE with a FIFO queue of negatives (He et al., 2020; MoCo v2: Chen et al., 2020).

    ``loss(query, key)``: query (batch_size, dim) from the encoder, key (batch_size, dim) from the momentum
    encoder. The logits are ``query @ cat(key, queue).T / temperature`` with the positive in column i, so the
    other samples' keys in the batch are negatives too (MoCo's own code uses only the queue; with K = 65536
    the difference is a few hundred extra negatives). After the loss is computed, the (normalised, detached) keys
    are enqueued, replacing the oldest. The queue is a buffer, so it is saved in ``state_dict`` and restored on
    resume. As in MoCo it starts as random unit vectors.

    Args:
        temperature: tau (MoCo v2: 0.2; MoCo v1: 0.07).
        queue_size: number of negatives K (MoCo: 65536).
        dim: embedding dimension (MoCo: 128).
        gather_distributed: use every rank's keys as in-batch negatives and enqueue them all (MoCo's
            concat_all_gather), so that the step equals one process on the global batch.

    Example::

        >>> import torch
        >>> from fastssl.nn import MoCoLoss
        >>> criterion = MoCoLoss(temperature=0.2, queue_size=1024, dim=128)
        >>> query, key = torch.randn(256, 128, requires_grad=True), torch.randn(256, 128)
        >>> loss = criterion(query, key)  # 1 positive and 255 + 1024 negatives per query; then key is enqueued
        >>> int(criterion.queue_ptr), sorted(criterion.state_dict())
        (256, ['queue', 'queue_ptr'])
    """

    def __init__(self, temperature: float = 0.07, queue_size: int = 65536, dim: int = 128,
                 gather_distributed: bool = False, backend: str = "auto"):
        super().__init__()
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.temperature = _check_temperature(temperature)
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.register_buffer("queue", nn.functional.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        _check_embeddings(query=query, key=key)
        if query.shape != key.shape:
            raise ValueError(f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}")
        if query.shape[1] != self.queue.shape[1]:
            raise ValueError(f"query has dim {query.shape[1]} but the queue was built with dim={self.queue.shape[1]}")
        rank, world = distributed_world()
        distributed = self.gather_distributed and world > 1
        batch_keys = gather_with_grad(key, "key") if distributed else key  # (world * batch, dim)
        # The queue holds unit rows; normalising them again inside the op is exact up to rounding.
        keys = torch.cat([batch_keys, self.queue.to(device=query.device, dtype=query.dtype)])
        n = query.shape[0]
        backend = _dispatch.select("info_nce", self.backend, query.device, query.dtype, query.shape[1])
        pos = (rank * n if distributed else 0) + torch.arange(n, device=query.device)
        exclude = torch.full((n,), -1, dtype=torch.int64, device=query.device)
        loss = info_nce_core(query, keys, _scale_tensor(1.0 / self.temperature, query), pos, exclude, True,
                             backend)
        self._enqueue(nn.functional.normalize(batch_keys.detach().float(), dim=1))
        if distributed:
            loss = loss + (mean_over_ranks(loss) - loss.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = keys[-self.queue.shape[0]:].to(self.queue.dtype)
        size, ptr, count = self.queue.shape[0], int(self.queue_ptr), keys.shape[0]
        first = min(count, size - ptr)
        self.queue[ptr : ptr + first] = keys[:first]
        self.queue[: count - first] = keys[first:]
        self.queue_ptr.fill_((ptr + count) % size)
