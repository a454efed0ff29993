"""``digits_cnn``: a small CNN for scikit-learn's 8x8 digits, trained, with its weights shipped.

The weights in ``data/digits_cnn.npz`` are made by ``python -m compiler.zoo.digits_cnn --train``
(deterministic: fixed seed, one thread, a few seconds). They are stored as plain arrays, loaded with
``allow_pickle=False``, so the file cannot carry code.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compiler.errors import EffarchError
from compiler.zoo import ZooModel

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).parent / "data" / "digits_cnn.npz"
BATCH = 16
SEED = 0
TEST_FRACTION = 0.25


class DigitsCNN(nn.Module):
    """(conv3x3-BN-ReLU-maxpool) x2 then a linear layer: [N,1,8,8] -> [N,10] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images float32 [N,1,8,8] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=TEST_FRACTION, random_state=SEED,
                                              stratify=labels)
    return x_tr, y_tr, x_te, y_te


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out images and labels that ``test_accuracy`` scores on (never used in training)."""
    _, _, x_te, y_te = _split()
    return x_te, y_te


def test_accuracy(predict: Callable[[np.ndarray], np.ndarray]) -> float:
    """Accuracy on the test split of ``predict``: [BATCH,1,8,8] -> logits [BATCH,10] or labels [BATCH].

    Compiled models have a static batch, so the split is fed in batches of exactly BATCH, the last one
    padded by repeating its final image; padded predictions are dropped.
    """
    images, labels = test_split()
    predicted = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        pad = BATCH - len(chunk)
        batch = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        out = np.asarray(predict(batch))
        predicted.append((out.argmax(axis=1) if out.ndim == 2 else out)[:len(chunk)])
    return float((np.concatenate(predicted) == labels).mean())


def _load_weights(module: DigitsCNN) -> None:
    if not WEIGHTS.exists():
        raise EffarchError(f"digits_cnn weights missing at {WEIGHTS}; run 'python -m compiler.zoo.digits_cnn "
                           f"--train'")
    with np.load(WEIGHTS, allow_pickle=False) as data:
        state = {k: torch.from_numpy(data[k].copy()) for k in data.files}
    module.load_state_dict(state, strict=True)


def _sample(seed: int) -> dict[str, np.ndarray]:
    images, _ = test_split()
    rng = np.random.default_rng(seed)
    return {"images": images[rng.choice(len(images), BATCH, replace=False)]}


def _build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    module = DigitsCNN()
    _load_weights(module)
    return module.eval(), (torch.from_numpy(_sample(SEED)["images"]),)


def _version() -> str:
    """Architecture version plus the weights' digest: retraining invalidates the cached ONNX file."""
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:8] if WEIGHTS.exists() else "untrained"
    return f"1-{digest}"


MODEL = ZooModel("digits_cnn", _version(), ("images",), ("logits",), _build, _sample)


def train(epochs: int = 30, out: Path = WEIGHTS) -> float:
    """Train deterministically and save the weights; returns held-out accuracy."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # reductions in a fixed order: the same weights on every run
    x_tr, y_tr, _, _ = _split()
    module = DigitsCNN()
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(SEED)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(epochs):
        module.train()
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
            opt.step()
    module.eval()
    np.savez(out, **{k: v.detach().numpy() for k, v in module.state_dict().items()})
    with torch.no_grad():
        return test_accuracy(lambda b: module(torch.from_numpy(b)).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--train", action="store_true", help="train and write " + str(WEIGHTS))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    if not args.train:
        parser.error("nothing to do; pass --train")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("held-out accuracy %.4f; weights written to %s", train(args.epochs), WEIGHTS)


if __name__ == "__main__":
    main()
