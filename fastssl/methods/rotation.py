"""RotNet: Gidaris, Singh and Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018.

Each image is rotated by 0, 90, 180 or 270 degrees and the backbone, followed by a linear 4-way classifier, must
tell which rotation was applied (cross-entropy). Recognising which way is up needs the objects: where the head
is, which way trees grow, where the sky is.

    x_k = rot90(view, k)                          # (batch_size, C, S, S), k = 0, 1, 2, 3
    logits = classifier(backbone(x_k))            # (batch_size, 4)
    loss = cross_entropy(logits, k)

``rotations``: "one" (default) rotates each image once, by a rotation drawn from a generator seeded by the step (a
resumed run draws the same ones); "all" puts all four rotated copies of each image in the batch, 4 x batch_size
images through the backbone (the paper's Section 3: better per epoch than one random rotation). Per unit of
compute "one" sees four times as many images: in 2-minute CPU runs on CIFAR-10 (batch 256, ResNet-18 at width
0.25; kNN on 10,000 train / 2,000 test images, random initialisation 30.1%) "one" made 59 steps and reached kNN
30.2%, "all" 12 steps and 24.5%; with an 8-minute budget "one" reached 35.8% (162 steps). Non-square views are
centre-cropped to a square first (a 90-degree turn must keep the shape).

Defaults: AdamW, lr 1e-3 x batch / 256, weight decay 0.05, betas (0.9, 0.95); one view of crop (scale 0.2-1) and
flip (the "mae" preset; the paper rotates the plain images). The paper's CIFAR-10 setting, SGD momentum 0.9 with
lr 0.1 at batch 128 and weight decay 5e-4 (--optimizer sgd --lr 0.2 --weight-decay 5e-4), is for 100+ epochs: in
2-minute CPU runs (about 55 steps of 256, one rotation per image; a budgeted run's lr jumps from ~0 to full at
step 5, when the schedule is fitted) it blew the loss up to > 2 within 10 steps, then stalled at ln 4 (chance)
with kNN at 12-24%, below the random initialisation's, at lr 0.2, 0.1 and 0.05 alike; AdamW learns steadily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.methods.base import Method
from fastssl.train.engine import _seed_for

ROTATIONS = ("all", "one")


def square_centre(view: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, S, S), S = min(H, W): the centred square (the view itself when H == W)."""
    height, width = view.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return view[..., top:top + side, left:left + side]


class Rotation(Method):
    name = "rotation"
    preset = "mae"
    small_preset = "mae"
    defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    options = {"rotations": "one"}

    def __init__(self, backbone, backbone_spec, rotations: str, **base):
        super().__init__(backbone, backbone_spec, **base)
        if rotations not in ROTATIONS:
            raise ValueError(f"rotations: expected one of {', '.join(ROTATIONS)}, got {rotations!r}")
        self.rotations = rotations
        self.classifier = nn.Linear(backbone.num_features, 4)
        # Seeds the per-image rotations of rotations="one"; saved with the weights (get_extra_state).
        self.rotation_seed = int(torch.randint(2 ** 62, ()))
        self._accuracy = torch.zeros(())

    def get_extra_state(self):
        return {"rotation_seed": self.rotation_seed}

    def set_extra_state(self, state) -> None:
        self.rotation_seed = int(state["rotation_seed"])

    def rotate(self, view: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """view (B, C, H, W) -> rotated images (4B, C, S, S) with labels 0..3 (int64 (4B,), all four rotations of
        each image, rotation-major) or (B, C, S, S) with one random label per image."""
        view = square_centre(view)
        batch = view.shape[0]
        rotated = torch.stack([torch.rot90(view, k, dims=(2, 3)) for k in range(4)])  # (4, B, C, S, S)
        if self.rotations == "all":
            labels = torch.arange(4, device=view.device).repeat_interleave(batch)
            images = rotated.flatten(0, 1)
        else:
            g = torch.Generator().manual_seed(_seed_for(self.rotation_seed, step))
            labels = torch.randint(4, (batch,), generator=g).to(view.device)
            images = rotated[labels, torch.arange(batch, device=view.device)]
        if view.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: [view (batch_size, C, H, W), ...]; only the first is used -> (logits (N, 4), labels (N,)) with
        N = 4 x batch_size (rotations="all") or batch_size ("one")."""
        images, labels = self.rotate(views[0], step)
        return self.classifier(self.backbone(images)), labels

    def loss(self, outputs):
        logits, labels = outputs
        self._accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return F.cross_entropy(logits.float(), labels)

    def logs(self):
        return {"rotation_accuracy": float(self._accuracy)}
