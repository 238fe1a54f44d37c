"""Per-sample SSL augmentation in one pass: uint8 images in, normalised views out.

This module holds the op's input types; the op, its reference and its dispatch follow below them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

Tensor = torch.Tensor


@dataclass
class PackedImages:
    """A batch of images of different sizes in one flat uint8 buffer, so that a photo dataset with mixed sizes goes
    through one kernel launch.

    Image ``b`` is ``data[offsets[b] : offsets[b] + heights[b] * widths[b] * channels]`` viewed as
    ``(heights[b], widths[b], channels)`` (HWC, as decoded). Every image has the same ``channels`` (3 or 1).

    data: uint8 (total,); offsets, heights, widths: int64 (B,), on the same device as ``data``.
    """

    data: Tensor
    offsets: Tensor
    heights: Tensor
    widths: Tensor
    channels: int

    @classmethod
    def from_list(cls, images: Sequence[Tensor], pin_memory: bool = False) -> "PackedImages":
        """Pack a list of uint8 (H, W, C) tensors (or numpy arrays) with the same C; (H, W) counts as C = 1."""
        if len(images) == 0:
            raise ValueError("images: empty list, nothing to pack")
        tensors = []
        for i, image in enumerate(images):
            image = torch.as_tensor(image)
            if image.dim() == 2:
                image = image.unsqueeze(-1)
            if image.dim() != 3 or image.dtype != torch.uint8:
                raise ValueError(f"images[{i}]: expected uint8 (H, W, C), got {image.dtype} {tuple(image.shape)}")
            tensors.append(image)
        channels = tensors[0].shape[-1]
        for i, image in enumerate(tensors):
            if image.shape[-1] != channels:
                raise ValueError(f"images[{i}]: has {image.shape[-1]} channels, images[0] has {channels}")
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
        offsets = torch.zeros(len(tensors), dtype=torch.int64)
        offsets[1:] = torch.cumsum(sizes, 0)[:-1]
        data = torch.empty(int(sizes.sum()), dtype=torch.uint8, pin_memory=pin_memory)
        torch.cat([t.reshape(-1) for t in tensors], out=data)
        heights = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
        widths = torch.tensor([t.shape[1] for t in tensors], dtype=torch.int64)
        return cls(data, offsets, heights, widths, int(channels))

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def device(self) -> torch.device:
        return self.data.device

    def image(self, index: int) -> Tensor:
        """Image ``index`` as a uint8 (H, W, C) view of the buffer."""
        h, w = int(self.heights[index]), int(self.widths[index])
        start = int(self.offsets[index])
        return self.data[start : start + h * w * self.channels].view(h, w, self.channels)

    def pin_memory(self) -> "PackedImages":
        return PackedImages(self.data.pin_memory(), self.offsets.pin_memory(), self.heights.pin_memory(),
                            self.widths.pin_memory(), self.channels)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "PackedImages":
        return PackedImages(*(t.to(device, non_blocking=non_blocking)
                              for t in (self.data, self.offsets, self.heights, self.widths)), self.channels)

    def validate(self, name: str = "images") -> None:
        """Raise ValueError naming ``name`` when the buffer and the index tensors disagree."""
        if self.data.dtype != torch.uint8 or self.data.dim() != 1:
            raise ValueError(f"{name}.data: expected a flat uint8 buffer, got {self.data.dtype} "
                             f"{tuple(self.data.shape)}")
        if self.channels not in (1, 3):
            raise ValueError(f"{name}.channels: expected 1 or 3, got {self.channels}")
        batch = self.offsets.shape[0] if self.offsets.dim() == 1 else -1
        for field in ("offsets", "heights", "widths"):
            t = getattr(self, field)
            if t.dtype != torch.int64 or t.dim() != 1 or t.shape[0] != batch:
                raise ValueError(f"{name}.{field}: expected int64 ({batch},), got {t.dtype} {tuple(t.shape)}")
            if t.device != self.data.device:
                raise ValueError(f"{name}.{field}: on {t.device}, data is on {self.data.device}")
        if batch == 0:
            raise ValueError(f"{name}: empty batch")
        if bool((self.heights < 1).any()) or bool((self.widths < 1).any()):
            raise ValueError(f"{name}: every image needs height and width >= 1")
        ends = self.offsets + self.heights * self.widths * self.channels
        if bool((self.offsets < 0).any()) or int(ends.max()) > self.data.numel():
            raise ValueError(f"{name}: an image runs past the end of data ({self.data.numel()} bytes)")


ImageBatch = Union[Tensor, PackedImages]
