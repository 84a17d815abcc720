"""CIFAR MobileNetV2 (kuangliu/pytorch-cifar layout: stride-1 stem, stride 1 in the 24-ch stage).

Unlike kuangliu, the residual add is identity-only (stride 1 and in == out), as in torchvision: no 1x1 shortcut convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from legr.models.registry import register_model

# (expansion, out_planes, num_blocks, stride)
MOBILENETV2_CIFAR_CFG = [
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
]


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; `+ x` when stride 1 and in == out."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out  # a Python bool fixed at init: fx-traceable


class CifarMobileNetV2(nn.Module):
    """Stem conv3x3 3->32 (stride 1), inverted residual `layers`, 1x1 conv 320->1280, average pool, `linear`."""

    def __init__(self, num_classes: int = 10, cfg: list[tuple[int, int, int, int]] = MOBILENETV2_CIFAR_CFG) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for expansion, out_planes, n, stride in cfg:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


@register_model(
    "cifar_mobilenet_v2",
    num_classes=10,
    input_size=(3, 32, 32),
    description="CIFAR MobileNetV2 (kuangliu layout, identity-only residuals)",
)
def cifar_mobilenet_v2(num_classes: int = 10, **kwargs) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, **kwargs)
