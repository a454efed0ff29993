"""Models the GPU check runs beside the zoo: shapes the zoo lacks, rebuilt from a seed on either machine.

``encoder_large``: a 2-layer transformer encoder at BERT-large width (d=1024, 16 heads, FFN 4096,
batch 2, sequence 128), the size at which the CUDA build once stopped in dlight's Transpose rule
(issue 11). ``python -m compiler.cli compile tools/gpu_models.py:encoder_large --target cuda`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


class _Encoder(torch.nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, layers: int) -> None:
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=ffn, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def encoder_large() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    module = _Encoder(1024, 16, 4096, 2).eval()
    return module, (torch.randn(2, 128, 1024),)


@dataclass(frozen=True)
class ExtraModel:
    """The part of ``compiler.zoo.ZooModel`` the GPU check uses."""

    name: str
    factory: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]
    input_names: tuple[str, ...]

    @property
    def source(self) -> str:
        return f"{__file__}:{self.name}"

    def build(self) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        return self.factory()

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        _, inputs = self.factory()
        return {n: t.numpy() for n, t in zip(self.input_names, inputs, strict=True)}


EXTRA: dict[str, ExtraModel] = {"encoder_large": ExtraModel("encoder_large", encoder_large, ("x",))}
