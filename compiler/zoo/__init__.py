"""The model zoo: small, deterministic PyTorch models that every part of effarch is tested on.

``names()`` lists them, ``get(name)`` returns a :class:`ZooModel`. A zoo model builds a fresh
``torch.nn.Module`` in eval mode with seeded weights (or shipped/real ones), exports itself to ONNX
once and caches the file, and makes realistic sample inputs. Models are imported lazily so that
listing the zoo does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.errors import EffarchError

if TYPE_CHECKING:
    import torch

# name -> (module under compiler.zoo, one-line description); each module defines ``MODEL: ZooModel``.
# Descriptions live here so that listing the zoo imports no model code.
_MODULES: dict[str, tuple[str, str]] = {
    "mlp": ("mlp", "784-512-512-10 MLP with GELU, batch 8, seeded random weights"),
    "digits_cnn": ("digits_cnn", "2-block CNN trained on scikit-learn's 8x8 digits (shipped weights)"),
    "resnet18": ("resnet", "ResNet-18, 1x3x224x224, seeded random weights and BN statistics"),
    "mobilenetv2": ("mobilenetv2", "MobileNetV2 (ReLU6), 1x3x224x224, seeded random weights"),
    "minilm": ("minilm", "all-MiniLM-L6-v2 sentence embedding (real weights), 1x32 tokens"),
    "gpt": ("gpt", "4-layer GPT decoder, d_model 256, vocab 2048, 1x64 tokens, seeded weights"),
}


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry. ``version`` is part of the cache file name: bump it when the model changes."""

    name: str
    version: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    _build: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]
    _sample: Callable[[int], dict[str, np.ndarray]]

    @property
    def description(self) -> str:
        return _MODULES[self.name][1]

    def build(self) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        """A fresh module in eval mode and its example inputs; identical on every call."""
        module, example = self._build()
        return module.eval(), example

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Realistic inputs named like the graph inputs (real digits, real token ids, ...)."""
        return self._sample(seed)

    def onnx_path(self) -> Path:
        """The model exported to ONNX opset 21, exported on first use and cached."""
        from compiler.zoo.export import cached_onnx

        return cached_onnx(self)


def names() -> list[str]:
    return list(_MODULES)


def describe() -> dict[str, str]:
    """name -> one-line description, without importing any model module (no torch import)."""
    return {name: desc for name, (_, desc) in _MODULES.items()}


def get(name: str) -> ZooModel:
    if name not in _MODULES:
        raise EffarchError(f"unknown zoo model '{name}'; choose one of: {', '.join(_MODULES)}")
    module_name, _ = _MODULES[name]
    module: Any = importlib.import_module(f"compiler.zoo.{module_name}")
    model: ZooModel = module.MODEL
    return model
