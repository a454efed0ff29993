"""``gpt``: a small GPT-2-style decoder with seeded weights (4 layers, d_model 256, 4 heads).

Pre-LayerNorm blocks, causal self-attention written out with matmuls and an additive mask (the form
every importer understands), learned positions, exact GELU MLP, and an output head tied to the token
embedding. Input int64 ``input_ids`` [1, 64]; output ``logits`` [1, 64, 2048].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from compiler.zoo import ZooModel

SEED = 0
VOCAB = 2048
SEQ = 64
D_MODEL = 256
HEADS = 4
LAYERS = 4


class CausalSelfAttention(nn.Module):
    mask: torch.Tensor  # a registered buffer; declared so type checkers know it is not a Module

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        # 0 on and below the diagonal, the most negative float above: a token never sees the future.
        future = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), diagonal=1)
        mask = torch.zeros(SEQ, SEQ).masked_fill(future, torch.finfo(torch.float32).min)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        # Reshape-permute-index rather than Tensor.split, which exports as ONNX sequence ops.
        qkv = self.qkv(x).reshape(b, s, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(d // HEADS)) + self.mask[:s, :s]
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = CausalSelfAttention()
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(SEQ, D_MODEL)
        self.blocks = nn.Sequential(*(Block() for _ in range(LAYERS)))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Positions 0..s-1 are a slice of the table: no Range/Gather on a constant in the graph.
        x = self.tok(input_ids) + self.pos.weight[: input_ids.shape[1]]
        return self.head(self.ln_f(self.blocks(x)))


def _init(module: GPT) -> GPT:
    """GPT-2's scheme: N(0, 0.02), residual output projections scaled down by sqrt(2 * layers)."""
    torch.manual_seed(SEED)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):  # non-trivial affine, so a LayerNorm lowering bug shows
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.normal_(m.bias, 0.0, 0.02)
    return module


def _sample(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB, size=(1, SEQ), dtype=np.int64)}


def _build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _init(GPT()).eval(), (torch.from_numpy(_sample(SEED)["input_ids"]),)


MODEL = ZooModel("gpt", "1", ("input_ids",), ("logits",), _build, _sample)
