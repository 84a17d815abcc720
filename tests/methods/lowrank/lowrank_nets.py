"""Small networks the low-rank tests decompose: the registered digits CNN and CIFAR ResNet-20, a depthwise-separable
net and a concatenating net built here (random init: decomposition is checked for equivalence, not accuracy)."""

import torch
from torch import nn

from legr.models import build_model


class Depthwise(nn.Module):
    """A depthwise-separable block, a strided dilated conv and a 1x1 conv with one output channel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.bn = nn.BatchNorm2d(24)
        self.down = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.score = nn.Conv2d(32, 1, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.pw(self.dw(torch.relu(self.stem(x))))))
        x = torch.relu(self.down(x))
        return self.fc(torch.flatten(self.score(x), 1))


class Concat(nn.Module):
    """Two branches concatenated along channels, a 5x5 conv with reflect padding, an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(3, 20, 5, padding=2, padding_mode="reflect")
        self.mix = nn.Conv2d(32, 40, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        x = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        x = torch.relu(self.mix(x))
        return self.head(x.mean((2, 3)))


def nets():
    """name -> (network in eval mode, input size)."""
    torch.manual_seed(0)
    return {"digits_cnn": (build_model("digits_cnn", num_classes=10).eval(), (1, 8, 8)),
            "cifar_resnet20": (build_model("cifar_resnet20", num_classes=10).eval(), (3, 32, 32)),
            "depthwise": (Depthwise().eval(), (3, 8, 8)), "concat": (Concat().eval(), (3, 8, 8))}
