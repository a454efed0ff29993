"""Seeded random weights that behave like trained ones, shared by the image models.

Eval-mode BatchNorm with default statistics (mean 0, variance 1) is an affine no-op that hides bugs in
Conv+BN folding. So the affine parameters are randomised and the running statistics are measured on
seeded calibration images: non-trivial per channel, and activations stay well scaled through depth.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def imagenet_like(seed: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Smooth random colour images, normalised with the ImageNet mean and std like real inputs."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    coarse = rng.random((n, c, h // 8 + 1, w // 8 + 1), dtype=np.float32)
    # Nearest upsampling plus fine noise: large uniform regions and texture, like photographs.
    pixels = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :h, :w]
    pixels = np.clip(pixels + 0.1 * rng.standard_normal((n, c, h, w), dtype=np.float32), 0.0, 1.0)
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def init_image_model(module: nn.Module, seed: int, image_shape: tuple[int, int, int, int]) -> nn.Module:
    """Kaiming convs, random BN affine, BN statistics calibrated on seeded images; returns it in eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    calib = torch.from_numpy(imagenet_like(seed + 1, (2, *image_shape[1:])))
    module.train()
    with torch.no_grad():
        module(calib)
    return module.eval()
