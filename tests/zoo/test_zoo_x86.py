"""Every zoo model compiles for x86 at -O2 and the binary matches onnxruntime running the original model;
MiniLM's sentence embeddings from the binary also match PyTorch's on real sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compiler import zoo
from compiler.driver import compile_model, load_model
from compiler.numerics.compare import compare_outputs
from compiler.numerics.reference import random_inputs, run_onnxruntime
from targets.runtime import load_artifact


@pytest.fixture(scope="module", params=zoo.names())
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    source = load_model(f"zoo:{name}")
    path = tmp_path_factory.mktemp(name) / f"{name}.effarch"
    compile_model(source, path, target="x86", opt_level=2)
    return name, source, load_artifact(path)


@pytest.mark.slow
@pytest.mark.parametrize("inputs_kind", ["sample", "random"])
def test_zoo_model_matches_onnxruntime(compiled, inputs_kind: str) -> None:
    name, source, artifact = compiled
    inputs = zoo.get(name).sample_inputs(1) if inputs_kind == "sample" else random_inputs(source.graph, seed=3)
    checks = compare_outputs(artifact.run(inputs), run_onnxruntime(source.reference_onnx, inputs))
    assert checks and all(c.ok for c in checks), [c.line() for c in checks]
    assert all(c.cosine > 0.99999 for c in checks if c.dtype.startswith("float"))


def test_minilm_embeddings_match_pytorch(tmp_path: Path) -> None:
    from compiler.zoo import minilm

    sentences = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    source = load_model("zoo:minilm")
    compile_model(source, tmp_path / "m.effarch", target="x86", opt_level=2)
    artifact = load_artifact(tmp_path / "m.effarch")
    module, _ = zoo.get("minilm").build()
    ours, theirs = [], []
    for sentence in sentences:
        tokens = minilm.tokenize([sentence])
        ours.append(artifact.run(tokens)["sentence_embedding"][0])
        with torch.no_grad():
            theirs.append(module(*(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask")))[0].numpy())
    ours_a, theirs_a = np.stack(ours), np.stack(theirs)
    np.testing.assert_allclose(ours_a, theirs_a, atol=2e-5)
    similarity = ours_a @ ours_a.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3  # the binary still knows cats from stock markets
