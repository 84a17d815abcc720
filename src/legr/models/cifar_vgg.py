"""CIFAR VGG-16 with BN (kuangliu/pytorch-cifar key layout): `features` (conv3x3-BN-ReLU, max-pools), `classifier`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from legr.models.registry import register_model

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG for 32x32 inputs: five max-pools take the map to 1x1, then Linear(512, num_classes)."""

    def __init__(self, cfg: list[int | str] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "cifar_vgg16_bn", num_classes=10, input_size=(3, 32, 32), description="CIFAR VGG-16 with BatchNorm, one Linear head"
)
def cifar_vgg16_bn(num_classes: int = 10, **kwargs) -> CifarVGG:
    return CifarVGG(VGG16_CFG, num_classes, **kwargs)
