"""PyTorch frontend: module paths as provenance, numbers equal to eager PyTorch, pt2 and builder loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.errors import EffarchError
from compiler.frontends.torch import import_exported_program, import_torch, load_builder, load_pt2
from compiler.ir import Graph
from compiler.ir.verifier import verify
from compiler.numerics.reference import run_onnxruntime
from tests.frontends import builders

BUILDERS = Path(builders.__file__)
# onnxruntime's float32 Gemm/Softmax against PyTorch's: a few ulps on values of order one.
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def net_graph() -> Graph:
    module, example = builders.build()
    graph = import_torch(module, example)
    verify(graph)
    return graph


def test_module_paths_become_provenance(net_graph: Graph) -> None:
    sources = {(n.op, n.provenance.source) for n in net_graph.nodes}
    assert ("Gemm", "block.seq.0") in sources
    assert ("Relu", "block.seq.1") in sources
    assert ("Gemm", "block.fc") in sources
    assert ("Gemm", "heads.0") in sources
    # Ops called in forward() itself belong to the root: their provenance is the ONNX node name.
    softmax = next(n for n in net_graph.nodes if n.op == "Softmax")
    assert softmax.provenance.source == softmax.name


def test_inputs_are_named_after_forward_arguments(net_graph: Graph) -> None:
    assert [v.name for v in net_graph.inputs] == ["features", "scale"]
    assert net_graph.metadata["producer"].startswith("pytorch")


def test_import_matches_eager_pytorch(net_graph: Graph) -> None:
    module, (x, s) = builders.build()
    expected = module.eval()(x, s).detach().numpy()
    out = run_onnxruntime(net_graph, {"features": x.numpy(), "scale": s.numpy()})
    (actual,) = out.values()
    np.testing.assert_allclose(actual, expected, **F32_TOL)


def test_pt2_save_and_load(tmp_path: Path) -> None:
    module, example = builders.build()
    ep = torch.export.export(module.eval(), example)
    path = tmp_path / "net.pt2"
    torch.export.save(ep, str(path))
    g = load_pt2(path)
    direct = import_exported_program(ep)
    def summary(graph: Graph) -> list[tuple[str, str]]:
        return [(n.op, n.provenance.source) for n in graph.nodes]

    assert summary(g) == summary(direct)
    assert len(g.metadata["source_sha256"]) == 64


def test_pt2_errors(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="not found"):
        load_pt2(tmp_path / "missing.pt2")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EffarchError, match="cannot load .* as a torch.export program"):
        load_pt2(bad)


def test_load_builder_returns_module_and_inputs() -> None:
    module, example = load_builder(f"{BUILDERS}:build")
    assert type(module).__name__ == "Net" and [t.shape for t in example] == [(2, 4), (2, 2)]


@pytest.mark.parametrize(("spec", "message"), [
    (f"{BUILDERS}", "must look like FILE.py:FUNCTION"),
    ("/no/such/models.py:build", "builder file '/no/such/models.py' not found"),
    (f"{BUILDERS}:missing", "has no function 'missing'"),
    (f"{BUILDERS}:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
    (f"{BUILDERS}:build_not_a_tuple", r"returned Net; it must return \(torch.nn.Module, tuple"),
    (f"{BUILDERS}:build_inputs_not_tuple", r"returned \(Net, list\)"),
])
def test_load_builder_errors(spec: str, message: str) -> None:
    with pytest.raises(EffarchError, match=message):
        load_builder(spec)


def test_import_torch_rejects_non_tuple_inputs() -> None:
    with pytest.raises(EffarchError, match="must be a tuple"):
        import_torch(builders.Net(), torch.randn(2, 4))  # type: ignore[arg-type]
