"""``mlp``: 784 -> 512 -> 512 -> 10 with GELU (exact, erf form), batch 8, seeded random weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compiler.zoo import ZooModel

SEED = 0
BATCH = 8


def _module() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(784, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))


def _sample(seed: int) -> dict[str, np.ndarray]:
    # Flattened 28x28 images in [0, 1], like normalised MNIST pixels.
    rng = np.random.default_rng(seed)
    return {"x": rng.random((BATCH, 784), dtype=np.float32)}


def _build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _module(), (torch.from_numpy(_sample(SEED)["x"]),)


MODEL = ZooModel("mlp", "1", ("x",), ("logits",), _build, _sample)
