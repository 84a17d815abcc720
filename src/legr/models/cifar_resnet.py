"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with akamaster/pytorch_resnet_cifar10 parameter names.

Option A: parameter-free shortcut (subsample + zero-pad channels), loads akamaster's checkpoints exactly.
Option B: 1x1 conv (stride s) + BN shortcut named `shortcut.0` / `shortcut.1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from legr.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: `x[:, :, ::2, ::2]` with `planes // 4` zero channels before and after (fx-traceable)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                if stride != 2 or planes != 2 * in_planes:
                    raise ValueError("option-A shortcut needs stride 2 and planes == 2 * in_planes")
                self.shortcut = PadShortcut(planes)
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv 3->16, stages of `n` blocks at 16/32/64 channels, global average pool, `linear`."""

    def __init__(self, depth: int, num_classes: int = 10, option: str = "A") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, n, 1, option)
        self.layer2 = self._make_layer(32, n, 2, option)
        self.layer3 = self._make_layer(64, n, 2, option)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # akamaster's init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int, option: str) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


_AKAMASTER = {  # depth -> file in weights_dir()/akamaster-cifar10/
    20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"
}


def _register(depth: int, option: str) -> None:
    suffix = "" if option == "A" else "_b"
    shortcut = "zero-pad (option A)" if option == "A" else "1x1 conv+BN (option B)"
    ckpt = _AKAMASTER.get(depth) if option == "A" else None

    @register_model(
        f"cifar_resnet{depth}{suffix}",
        num_classes=10,
        input_size=(3, 32, 32),
        description=f"CIFAR ResNet-{depth}, {shortcut} shortcut",
        pretrained=f"akamaster-cifar10/{ckpt}" if ckpt else None,
    )
    def build(num_classes: int = 10, **kwargs) -> CifarResNet:
        return CifarResNet(depth, num_classes, option=option, **kwargs)


for _depth in (20, 32, 44, 56, 110):
    for _option in ("A", "B"):
        _register(_depth, _option)
