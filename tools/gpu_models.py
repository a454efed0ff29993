"""Models the GPU check runs beside the zoo: shapes the zoo lacks, rebuilt from a seed on either machine.

``encoder_large``: a 2-layer transformer encoder at BERT-large width (d=1024, 16 heads, FFN 4096,
batch 2, sequence 128), the size at which the CUDA build once stopped in dlight's Transpose rule
(issue 11). ``python -m compiler.cli compile tools/gpu_models.py:encoder_large --target cuda`` builds it.

Batch variants of the zoo (``batched_source``, ``batched_inputs``): the same seeded module exported to ONNX
from inputs of another batch (the zoo's files have its one static batch), and sample inputs stacked from
consecutive seeds to that batch; both machines make the same ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# ---- batch variants -----------------------------------------------------------------------------
# The zoo's models take any batch, but their ONNX files are exported at one fixed batch (the compiled
# artifact has static shapes). A variant is the same module, exported from example inputs of another batch.
def _entry(name: str) -> Any:
    from compiler import zoo

    return EXTRA[name] if name in EXTRA else zoo.get(name)


def native_batch(name: str) -> int:
    inputs = _entry(name).sample_inputs(0)
    return int(next(iter(inputs.values())).shape[0])


def batched_inputs(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The entry's sample inputs at ``batch`` rows: samples of seeds seed, seed+1, ... stacked, then cut."""
    entry = _entry(name)
    parts = [entry.sample_inputs(seed)]
    while sum(len(next(iter(p.values()))) for p in parts) < batch:
        parts.append(entry.sample_inputs(seed + len(parts)))
    return {n: np.concatenate([p[n] for p in parts])[:batch] for n in entry.input_names}


def batched_source(name: str, batch: int) -> str:
    """A model spec ``effarch compile`` takes: the zoo's own at its batch, else an ONNX file exported
    (once, into the zoo's cache) from the same module with inputs of ``batch`` rows."""
    if batch == native_batch(name):
        return EXTRA[name].source if name in EXTRA else f"zoo:{name}"
    if name in EXTRA:
        raise ValueError(f"{name} is built at batch {native_batch(name)} only")
    from compiler import zoo
    from compiler.zoo.export import cached_onnx

    entry = zoo.get(name)
    inputs = batched_inputs(name, batch)

    def build() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        module, _ = entry.build()
        return module, tuple(torch.from_numpy(inputs[n]) for n in entry.input_names)

    variant = dataclasses.replace(entry, version=f"{entry.version}-b{batch}", _build=build)
    return str(cached_onnx(variant))
