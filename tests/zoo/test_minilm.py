"""minilm: our torch.export-friendly module gives sentence-transformers' embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler.zoo import minilm

pytestmark = pytest.mark.slow

SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar on stage.",
             "The stock market fell sharply today.", "How do I reset my password?"]


@pytest.fixture(scope="module")
def ours() -> np.ndarray:
    module, _ = minilm.MODEL.build()
    tokens = minilm.tokenize(SENTENCES)
    with torch.no_grad():
        rows = [module(torch.from_numpy(tokens["input_ids"][i:i + 1]),
                       torch.from_numpy(tokens["attention_mask"][i:i + 1])) for i in range(len(SENTENCES))]
    return torch.cat(rows).numpy()


def test_matches_sentence_transformers(ours: np.ndarray) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(SENTENCES)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosine = (ours * reference).sum(axis=1)
    assert (cosine > 0.9999).all(), cosine


def test_similar_sentences_score_higher(ours: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    sim = ours @ ours.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


def test_sample_inputs_are_padded_token_ids() -> None:
    inputs = minilm.MODEL.sample_inputs(seed=1)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape == (1, minilm.SEQ) and ids.dtype == mask.dtype == np.int64
    n = int(mask.sum())
    assert ids[0, 0] == 101 and ids[0, n - 1] == 102  # [CLS] ... [SEP] from the real vocabulary
    assert (ids[0, n:] == 0).all() and (mask[0, :n] == 1).all() and 2 < n < minilm.SEQ
