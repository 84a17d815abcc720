"""Small ConvNets for the embedded demo data (scikit-learn digits, 1x8x8) and MNIST (1x28x28)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from legr.models.registry import register_model


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv-BN-ReLU x2, max-pool, conv-BN-ReLU x2, global average pool, Linear — a few pruneable layers."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 64, 128), num_classes: int = 10):
        super().__init__()
        a, b, c, d = widths
        self.features = nn.Sequential(*_block(in_channels, a), *_block(a, b), nn.MaxPool2d(2), *_block(b, c), *_block(c, d))
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@register_model("digits_cnn", num_classes=10, input_size=(1, 8, 8),
                description="small 4-conv CNN for scikit-learn digits (the demo model)")
def digits_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(1, num_classes=num_classes, **kwargs)


@register_model("mnist_cnn", num_classes=10, input_size=(1, 28, 28), description="small 4-conv CNN for MNIST")
def mnist_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(1, num_classes=num_classes, **kwargs)
