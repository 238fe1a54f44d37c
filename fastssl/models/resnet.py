"""ResNet-18 and ResNet-50 (He et al., 2016) as SSL backbones: pooled features, no classifier.

Same layers and initialisation as torchvision's (stride on the 3x3 conv of a Bottleneck, "ResNet v1.5"), so
that parameter counts match the papers' (11.2M and 23.5M without the fc layer). ``cifar_stem=True`` swaps the
7x7 stride-2 conv and the max-pool for one 3x3 stride-1 conv, the usual stem for 32x32 images (SimCLR's
CIFAR-10 experiments): the stock stem would shrink a 32x32 image to 8x8 before the first block.
"""

from __future__ import annotations

from typing import Type, Union

import torch
from torch import nn

Tensor = torch.Tensor


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SubsampledPointwiseConv(nn.Conv2d):
    """A 1x1 conv with stride s, computed as a stride-1 1x1 conv of ``x[:, :, ::s, ::s]`` (the same numbers, the
    same parameters as ``nn.Conv2d(in, out, 1, s)``). torch 2.13.0's CPU build crashes (SIGSEGV / SIGABRT) in the
    backward of a channels_last 1x1 stride-2 conv from 8 to 16 channels on 32 x 32 inputs with an odd batch (3, 5,
    7) on two threads (ResNet-18 at width 0.125, the tests' width; the other widths and shapes we tried pass),
    e.g. in a fine-tuning epoch's last batch; the stride-1 conv of the subsampled input does not."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, 1, bias=False)
        self.subsample = stride

    def forward(self, x: Tensor) -> Tensor:
        s = self.subsample
        return super().forward(x if s == 1 else x[:, :, ::s, ::s])


def _shortcut(in_planes: int, out_planes: int, stride: int) -> Union[nn.Sequential, None]:
    """Projection shortcut (1x1 conv + BN, the paper's option B) where the shape changes, else identity."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(SubsampledPointwiseConv(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """ResNet trunk + global average pool: (B, in_channels, H, W) -> (B, num_features).

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        in_channels: 3 for RGB, 1 for MNIST.
        width: multiplier of the stage widths 64, 128, 256, 512 (SimCLR's ResNet-50 (2x) is width=2).
        cifar_stem: 3x3 stride-1 stem conv and no max-pool, for 32x32 inputs.
        zero_init_residual: start the last BN of every residual branch at gamma = 0, so that each block
            begins as the identity (Goyal et al., 2017); BYOL and SimSiam's ImageNet recipes use it.

    ``num_features`` = 512 * width * expansion (512 for ResNet-18, 2048 for ResNet-50 at width 1).
    """

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: tuple[int, int, int, int],
                 in_channels: int = 3, width: float = 1.0, cifar_stem: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        widths = [int(round(64 * width * 2 ** i)) for i in range(4)]
        if widths[0] < 1:
            raise ValueError(f"width: {width} leaves the first stage with no channels")
        self.in_channels = in_channels
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, (B, num_features, H / 32, W / 32) (H, W with the CIFAR stem: / 8)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2), 512 features."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3), 2048 features."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
