"""lower(): module structure (weights as parameters, num_input, tuple output), errors, numbers."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.errors import EffarchError
from compiler.ir.graph import Graph
from compiler.ir.types import DType, TensorType
from targets.lowering.to_relax import INLINE_MAX_ELEMENTS, lower
from tests.targets import run_lowered, run_onnxruntime

F32_TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32 matmul chains of a few dozen terms


def f32(*shape: int) -> TensorType:
    return TensorType(DType.F32, shape)


def mlp() -> Graph:
    """x -> MatMul(w1) -> Add(b1) -> Relu -> Gemm(w2^T, b2, alpha, beta)."""
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", f32(3, 8))
    w1 = g.add_constant("w1", rng.standard_normal((8, 16), dtype=np.float32))
    b1 = g.add_constant("b1", rng.standard_normal(16, dtype=np.float32))
    w2 = g.add_constant("w2", rng.standard_normal((5, 16), dtype=np.float32))
    b2 = g.add_constant("b2", rng.standard_normal(5, dtype=np.float32))
    h = g.make_node("MatMul", [x, w1], types=[f32(3, 16)]).outputs[0]
    h = g.make_node("Add", [h, b1], types=[f32(3, 16)]).outputs[0]
    h = g.make_node("Relu", [h], types=[f32(3, 16)]).outputs[0]
    y = g.make_node("Gemm", [h, w2, b2], {"transB": 1, "alpha": 0.5, "beta": 2.0}, types=[f32(3, 5)])
    g.outputs = [y.outputs[0]]
    return g


def test_weights_are_parameters_not_constants() -> None:
    g = mlp()
    low = lower(g)
    main = low.mod["main"]
    # b1, b2 are small: inlined; Gemm's transB weight is transposed at compile time, once
    assert [p.name for p in main.params] == ["x", "w1", "w2_T"]
    assert low.param_names == ["w1", "w2_T"]
    assert [p.shape for p in low.params] == [(8, 16), (16, 5)]
    np.testing.assert_array_equal(low.params[1], g.constants["w2"].const.T)
    embedded = [c for c in _constants(main) if c.value.numpy().size > INLINE_MAX_ELEMENTS]
    assert embedded == []


def test_num_input_and_tuple_output() -> None:
    low = lower(mlp())
    main = low.mod["main"]
    assert int(main.attrs["num_input"]) == 1
    assert isinstance(main.ret_ty, relax.TupleType)
    assert (low.input_names, low.output_names) == (["x"], [mlp().outputs[0].name])


def test_mlp_matches_onnxruntime() -> None:
    g = mlp()
    x = np.random.default_rng(1).standard_normal((3, 8), dtype=np.float32)
    (got,) = run_lowered(lower(g), {"x": x})
    (want,) = run_onnxruntime(g, {"x": x})
    np.testing.assert_allclose(got, want, **F32_TOL)


def test_unknown_input_dim_is_an_error() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(DType.F32, (None, 4)))
    g.outputs = [g.make_node("Relu", [x], types=[x.type]).outputs[0]]
    with pytest.raises(EffarchError, match=r"--shape x="):
        lower(g)


def test_symbolic_input_dims_are_shared_relax_vars() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(DType.F32, ("batch", 4)))
    y = g.add_input("y", TensorType(DType.F32, ("batch", 4)))
    g.outputs = [g.make_node("Add", [x, y], types=[x.type]).outputs[0]]
    px, py = lower(g).mod["main"].params[:2]
    bx, by = px.ty.shape.values[0], py.ty.shape.values[0]
    assert bx.name == "batch" and bx.same_as(by)  # one symbol: sizes must agree at run time


def test_non_constant_shape_argument_is_an_error() -> None:
    g = Graph()
    x = g.add_input("x", f32(2, 6))
    shape = g.add_input("shape", TensorType(DType.I64, (2,)))
    g.outputs = [g.make_node("Reshape", [x, shape], name="r", types=[f32(3, 4)]).outputs[0]]
    with pytest.raises(EffarchError, match=r"node 'r' \(Reshape\).*not a compile-time constant"):
        lower(g)


def _constants(func: relax.Function) -> list[tvm.ir.expr.GenericConst]:
    found: list[tvm.ir.expr.GenericConst] = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, tvm.ir.expr.GenericConst) else None)
    return found


def test_unfolded_shape_arithmetic_is_evaluated_at_compile_time() -> None:
    # Reshape(x, Concat(Gather(Shape(x), 0), [-1])): the exporter's flatten, never folded.
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    shape = g.make_node("Shape", [x], types=[TensorType(DType.I64, (3,))]).outputs[0]
    zero = g.add_constant("zero", np.array([0], np.int64))
    first = g.make_node("Gather", [shape, zero], {"axis": 0}, types=[TensorType(DType.I64, (1,))])
    rest = g.add_constant("rest", np.array([-1], np.int64))
    target = g.make_node("Concat", [first.outputs[0], rest], {"axis": 0}, types=[TensorType(DType.I64, (2,))])
    y = g.make_node("Reshape", [x, target.outputs[0]], types=[f32(2, 12)]).outputs[0]
    g.outputs = [y, shape]
    low = lower(g)
    ops = _call_ops(low.mod["main"])
    assert ops == {"relax.reshape"}, ops  # Shape, Gather and Concat left no trace
    xv = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got, got_shape = run_lowered(low, {"x": xv})
    want, want_shape = run_onnxruntime(g, {"x": xv})
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_shape, want_shape)


def test_conv_batchnorm_pool_match_onnxruntime() -> None:
    rng = np.random.default_rng(2)
    g = Graph("cnn")
    x = g.add_input("x", f32(1, 3, 9, 9))
    w = g.add_constant("w", rng.standard_normal((4, 3, 3, 3), dtype=np.float32))
    stats = [g.add_constant(n, rng.uniform(0.5, 1.5, 4).astype(np.float32)) for n in ("s", "b", "m", "v")]
    h = g.make_node("Conv", [x, w], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, types=[f32(1, 4, 5, 5)])
    h = g.make_node("BatchNormalization", [h.outputs[0], *stats], {"epsilon": 1e-3}, types=[f32(1, 4, 5, 5)])
    h = g.make_node("MaxPool", [h.outputs[0]], {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]},
                    types=[f32(1, 4, 3, 3)])
    g.outputs = [h.outputs[0]]
    xv = rng.standard_normal((1, 3, 9, 9), dtype=np.float32)
    (got,) = run_lowered(lower(g), {"x": xv})
    (want,) = run_onnxruntime(g, {"x": xv})
    np.testing.assert_allclose(got, want, **F32_TOL)


def test_unlowerable_op_names_it() -> None:
    g = Graph()
    x = g.add_input("x", f32(2))
    g.outputs = [g.make_node("NonZero", [x], types=[None]).outputs[0]]
    with pytest.raises(EffarchError, match="NonZero"):
        lower(g)


def _call_ops(func: relax.Function) -> set[str]:
    ops: set[str] = set()
    relax.analysis.post_order_visit(
        func, lambda e: ops.add(e.op.name) if isinstance(e, relax.Call) and hasattr(e.op, "name") else None)
    return ops


@pytest.mark.parametrize("index", [1, -1])
def test_gather_of_one_constant_index_is_a_slice(index: int) -> None:
    """A scalar constant index lowers to strided_slice + reshape, which fuse with their neighbours (TVM's
    take with a constant index tensor is opaque to fusion); negative indices count from the end."""
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    i = g.add_constant("i", np.array(index, np.int64))
    g.outputs = [g.make_node("Gather", [x, i], {"axis": 1}, types=[f32(2, 4)]).outputs[0]]
    low = lower(g)
    assert _call_ops(low.mod["main"]) == {"relax.strided_slice", "relax.reshape"}
    xv = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    (got,) = run_lowered(low, {"x": xv})
    np.testing.assert_array_equal(got, xv[:, index, :])
