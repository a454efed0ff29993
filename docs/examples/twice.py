"""The model of docs/writing_passes.md's worked example: a layer whose output goes through Relu twice.

    effarch explain docs/examples/twice.py:build --pass simplify
"""

import torch


class Twice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.relu(self.fc(x))).abs().abs()


def build() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Twice().eval(), (torch.randn(2, 8),)
