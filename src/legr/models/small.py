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


class LeNet300100(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015): 784-300-100-10 MLP with ReLU, 266,610 parameters.

    ``dropout`` > 0 puts ``nn.Dropout`` after each hidden layer (the modules exist with p=0 otherwise, so the
    state dict and the layer names ``fc1``/``fc2``/``fc3`` never change).
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.drop1 = nn.Linear(in_features, 300), nn.Dropout(dropout)
        self.fc2, self.drop2 = nn.Linear(300, 100), nn.Dropout(dropout)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(torch.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc3(self.drop2(torch.relu(self.fc2(x))))


class LeNet5(nn.Module):
    """The Caffe LeNet-5 of Han et al. 2015: conv 20@5x5, max-pool, conv 50@5x5, max-pool, fc 500 + ReLU, fc 10.

    As in Caffe's ``lenet_train_test.prototxt`` the convolutions have no activation; 431,080 parameters on 1x28x28.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1, self.drop1 = nn.Linear(50 * 4 * 4, 500), nn.Dropout(dropout)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.max_pool2d(self.conv2(nn.functional.max_pool2d(self.conv1(x), 2)), 2)
        return self.fc2(self.drop1(torch.relu(self.fc1(torch.flatten(x, 1)))))


@register_model("lenet_300_100", num_classes=10, input_size=(1, 28, 28),
                description="LeNet-300-100 MLP for MNIST (Han et al. 2015)")
def lenet_300_100(num_classes: int = 10, **kwargs) -> LeNet300100:
    return LeNet300100(num_classes=num_classes, **kwargs)


@register_model("lenet5", num_classes=10, input_size=(1, 28, 28),
                description="Caffe LeNet-5 (conv20-conv50-fc500-fc10) for MNIST (Han et al. 2015)")
def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    return LeNet5(num_classes=num_classes, **kwargs)
