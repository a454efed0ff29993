"""Builders for load_builder tests: one valid, and several wrong returns."""

from __future__ import annotations

import torch


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.seq(x))


class Net(torch.nn.Module):
    """Nested modules: a Sequential inside a submodule, and a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.heads = torch.nn.ModuleList([torch.nn.Linear(3, 2)])

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.heads[0](self.block(features)), dim=-1) * scale


def build() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Net(), (torch.randn(2, 4), torch.randn(2, 2))


def build_not_a_tuple() -> torch.nn.Module:
    return Net()


def build_inputs_not_tuple() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    return Net(), [torch.randn(2, 4), torch.randn(2, 2)]


NOT_CALLABLE = 3
