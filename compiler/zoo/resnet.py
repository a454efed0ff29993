"""``resnet18``: the standard ResNet-18 (He et al. 2015) for 1x3x224x224 images, seeded weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compiler.zoo import ZooModel
from compiler.zoo.weights import imagenet_like, init_image_model

SEED = 0
SHAPE = (1, 3, 224, 224)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        widths = [64, 128, 256, 512]
        stages: list[nn.Module] = []
        cin = 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _sample(seed: int) -> dict[str, np.ndarray]:
    return {"images": imagenet_like(seed, SHAPE)}


def _build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    module = init_image_model(ResNet18(), SEED, SHAPE)
    return module, (torch.from_numpy(_sample(SEED)["images"]),)


MODEL = ZooModel("resnet18", "1", ("images",), ("logits",), _build, _sample)
