"""Conformance round trip: ONNX backend node cases -> import -> export -> onnxruntime == expected outputs.

The installed onnx wheel ships no ``onnx/backend/test/data/node`` folder, so the cases come from the
generator that writes those files: ``onnx.backend.test.case.node.collect_testcases`` (same models,
same inputs and expected outputs). Cases are selected by the op types in their models.

Cases are imported at the opset they were written for: the importer converts those below opset 13
and reads those above 21 where the op's form is unchanged (``compiler.frontends.onnx_opsets``).
Cases using what effarch does not support (an op outside SUPPORTED_OPS, a newer op form that sets
an attribute its opset-21 form lacks, an element type outside DType, a non-tensor value, an opset
out of range) must fail import with a one-line EffarchError saying so.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
import pytest

from compiler.errors import EffarchError
from compiler.frontends.onnx import DEFAULT_DOMAINS, import_onnx
from compiler.frontends.onnx_export import to_onnx
from compiler.frontends.onnx_opsets import MAX_OPSET, MIN_OPSET, newer_forms
from compiler.ir import DType
from compiler.ir.ops import SUPPORTED_OPS
from compiler.ir.verifier import verify
from compiler.numerics.reference import run_onnxruntime

# Cases that import but cannot be checked against their expected outputs, with the reason.
ORT_LACKS_KERNEL = "onnxruntime has no CPU kernel for it (the original model fails there too)"
ORT_NO_BF16_IO = "onnxruntime's Python API cannot feed or return bfloat16 arrays (the original fails too)"
ORT_DIFFERS = "onnxruntime's result differs from ONNX's reference outputs (the original model's too)"
ORT_LACKS_EXPORTED_BF16 = ("onnxruntime has no bfloat16 kernel for Attention-25, the form the exporter writes "
                           "(the opset-23 original runs there)")
RANDOM_OUTPUT = "training-mode Dropout draws random masks; only output names, dtypes and shapes are checked"
EXCLUDED: dict[str, str] = {
    "test_attention_3d_causal_bf16_expanded": ORT_NO_BF16_IO,
    "test_attention_4d_attn_mask_causal_bf16_expanded": ORT_NO_BF16_IO,
    "test_attention_4d_causal_bf16_expanded": ORT_NO_BF16_IO,
    "test_attention_4d_causal_padded_kv_bf16_expanded": ORT_NO_BF16_IO,
    "test_attention_4d_padded_kv_bf16_expanded": ORT_NO_BF16_IO,
    "test_attention_3d_causal_bf16": ORT_LACKS_EXPORTED_BF16,
    "test_attention_4d_attn_mask_causal_bf16": ORT_LACKS_EXPORTED_BF16,
    "test_attention_4d_causal_bf16": ORT_LACKS_EXPORTED_BF16,
    "test_attention_4d_causal_padded_kv_bf16": ORT_LACKS_EXPORTED_BF16,
    "test_attention_4d_padded_kv_bf16": ORT_LACKS_EXPORTED_BF16,
    "test_cast_BFLOAT16_to_FLOAT": ORT_NO_BF16_IO,
    "test_cast_FLOAT_to_BFLOAT16": ORT_NO_BF16_IO,
    "test_castlike_BFLOAT16_to_FLOAT": ORT_NO_BF16_IO,
    "test_castlike_BFLOAT16_to_FLOAT_expanded": ORT_NO_BF16_IO,
    "test_castlike_FLOAT_to_BFLOAT16": ORT_NO_BF16_IO,
    "test_castlike_FLOAT_to_BFLOAT16_expanded": ORT_NO_BF16_IO,
    # onnxruntime's CPU RNN/GRU/LSTM refuse layout=1 (batch first); effarch passes these cases.
    "test_gru_batchwise": ORT_LACKS_KERNEL,
    "test_lstm_batchwise": ORT_LACKS_KERNEL,
    "test_simple_rnn_batchwise": ORT_LACKS_KERNEL,
    "test_bitcast_bool_to_uint8": ORT_LACKS_KERNEL,
    "test_max_int16": ORT_LACKS_KERNEL,
    "test_max_uint16": ORT_LACKS_KERNEL,
    # onnxruntime's ConvInteger takes one weight zero point per tensor; this case has one per channel.
    "test_convinteger_with_padding": ORT_LACKS_KERNEL,
    "test_maxunpool_export_with_output_shape": ORT_DIFFERS,  # onnxruntime places the values elsewhere
    "test_min_int16": ORT_LACKS_KERNEL,
    "test_min_uint16": ORT_LACKS_KERNEL,
    "test_pow_types_float32_uint32": ORT_LACKS_KERNEL,
    "test_pow_types_float32_uint64": ORT_LACKS_KERNEL,
    "test_reduce_max_empty_set_bool": ORT_LACKS_KERNEL,
    "test_top_k_uint64": ORT_LACKS_KERNEL,
    # Downscaling with align_corners by a scale whose output size is not whole: onnxruntime differs.
    "test_resize_downsample_scales_cubic_align_corners": ORT_DIFFERS,
    "test_resize_downsample_scales_linear_align_corners": ORT_DIFFERS,
    "test_training_dropout": RANDOM_OUTPUT,
    "test_training_dropout_default": RANDOM_OUTPUT,
    "test_training_dropout_default_mask": RANDOM_OUTPUT,
    "test_training_dropout_mask": RANDOM_OUTPUT,
}
SUPPORTED_ELEM_TYPES = frozenset(d.onnx_code for d in DType)
CONSTANT_ONLY = frozenset({DType.I4.onnx_code, DType.U4.onnx_code})  # 4-bit: weights, never values


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto  # retargeted to opset 21 where that is valid
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float
    atol: float

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.model.graph.node if n.domain in DEFAULT_DOMAINS}


@cache
def _cases() -> dict[str, Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow on purpose for cast edge cases
        from onnx.backend.test.case.node import collect_testcases

        raw = collect_testcases(None)
    cases = {}
    for c in raw:
        if {n.op_type for n in c.model.graph.node} & SUPPORTED_OPS:
            cases[c.name] = Case(c.name, c.model, c.data_sets, c.rtol, c.atol)
    return cases


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)


def _newer_form(model: onnx.ModelProto) -> bool:
    """A node whose form at the model's opset is not its opset-21 form (rule: onnx_opsets)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info,
                                                             *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return bool(newer_forms(model.graph, _opset(model), lambda n: types.get(n) or None))


def _expected_import_error(model: onnx.ModelProto) -> str | None:
    """A regex for the error import must raise, judged from the model alone (not from the importer)."""
    if not MIN_OPSET <= _opset(model) <= MAX_OPSET:
        return r"ONNX opset \d+ is not supported"
    if any(n.op_type not in SUPPORTED_OPS or n.domain not in DEFAULT_DOMAINS for n in model.graph.node) or (
            _newer_form(model)):
        return r"unsupported operators \(\d+ types"
    values = [*model.graph.input, *model.graph.output]
    if any(v.type.WhichOneof("value") != "tensor_type" for v in values):
        return "type, not a tensor"
    elem_types = [v.type.tensor_type.elem_type for v in values]
    if any(t in CONSTANT_ONLY for t in elem_types):
        return "element type .* which effarch does not support"
    elem_types += [i.data_type for i in model.graph.initializer]
    if any(t not in SUPPORTED_ELEM_TYPES for t in elem_types):
        return "element type .* which effarch does not support"
    return None


def _assert_matches(actual: np.ndarray, expected: np.ndarray, case: Case, name: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if expected.dtype == DType.BF16.numpy:  # numpy's comparisons do not know ml_dtypes' bfloat16
        actual, expected = actual.astype(np.float32), expected.astype(np.float32)
    if np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_allclose(actual, expected, rtol=case.rtol, atol=case.atol, err_msg=name)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=name)


def _round_trip(case: Case) -> onnx.ModelProto:
    graph = import_onnx(case.model)
    verify(graph)
    exported = to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    again = to_onnx(import_onnx(exported))
    exported_text = onnx.printer.to_text(exported.graph)
    assert onnx.printer.to_text(again.graph) == exported_text, "export -> import -> export changed the graph"
    return exported


def _run_data_sets(case: Case, model: onnx.ModelProto, check: Callable[..., None]) -> None:
    initializers = {i.name for i in case.model.graph.initializer}
    input_names = [v.name for v in case.model.graph.input if v.name not in initializers]
    output_names = [v.name for v in case.model.graph.output]
    for inputs, expected in case.data_sets:
        feeds = {name: _array(x) for name, x in zip(input_names, inputs, strict=True)}
        results = run_onnxruntime(model, feeds)
        assert list(results) == output_names
        for name, want in zip(output_names, expected, strict=True):
            check(results[name], _array(want), case, name)


def _array(x: np.ndarray | onnx.TensorProto) -> np.ndarray:
    # Some generators (Cast) store their data as TensorProtos to keep exact bit patterns.
    return onnx.numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x


def _check_shape(actual: np.ndarray, expected: np.ndarray, case: Case, name: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name


def run_case(case: Case) -> str:
    """Check one case; returns how it was judged ("passed", "rejected", or an EXCLUDED reason)."""
    error = _expected_import_error(case.model)
    if error is not None:
        with pytest.raises(EffarchError, match=error) as info:
            import_onnx(case.model)
        assert "\n" not in str(info.value)
        return "rejected"
    exported = _round_trip(case)
    reason = EXCLUDED.get(case.name)
    if reason in (ORT_LACKS_KERNEL, ORT_NO_BF16_IO):
        with pytest.raises(EffarchError, match="onnxruntime"):
            _run_data_sets(case, case.model, _assert_matches)
        return reason
    if reason == ORT_LACKS_EXPORTED_BF16:
        with pytest.raises(EffarchError, match="onnxruntime"):
            _run_data_sets(case, exported, _assert_matches)
        return reason
    if reason == ORT_DIFFERS:
        with pytest.raises(AssertionError):
            _run_data_sets(case, case.model, _assert_matches)
        return reason
    _run_data_sets(case, exported, _check_shape if reason == RANDOM_OUTPUT else _assert_matches)
    return reason or "passed"


@pytest.mark.parametrize("name", sorted(_cases()))
def test_backend_case_round_trips(name: str) -> None:
    run_case(_cases()[name])


def test_every_supported_op_has_a_passing_case() -> None:
    passing: set[str] = set()
    for case in _cases().values():
        if _expected_import_error(case.model) is None and case.name not in EXCLUDED:
            passing |= case.op_types
    assert SUPPORTED_OPS - passing == set()


def test_exclusions_name_real_importable_cases() -> None:
    cases = _cases()
    for name in EXCLUDED:
        assert name in cases, f"excluded case {name} does not exist"
        assert _expected_import_error(cases[name].model) is None, f"{name} is rejected anyway; drop it"


def test_rejections_are_judged_from_the_model() -> None:
    # Guard against the classifier rejecting everything: most selected cases must really run.
    judged = [_expected_import_error(c.model) is None for c in _cases().values()]
    assert sum(judged) > len(judged) // 2
    assert re.search("opset", _expected_import_error(_with_opset(6)) or "")
    assert _expected_import_error(_with_opset(11)) is None  # converted on import
    graph = import_onnx(_with_opset(9))
    assert graph.metadata["source_opset"] == "9" and "version converter" in graph.metadata["import_notes"]
    with pytest.raises(EffarchError, match=r"ONNX opset 6 is not supported \(effarch reads opsets 7\.\.28\)"):
        import_onnx(_with_opset(6))


def test_newer_op_forms_are_refused_by_name() -> None:
    pool = onnx.helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], ceil_mode=1, name="pool")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 5])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph([pool], "g", [x], [y])
    at22 = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 22)])
    with pytest.raises(EffarchError, match=r"MaxPool \(opset-22 form\) x1 \[pool\]"):
        import_onnx(at22)
    at21 = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    assert [n.op for n in import_onnx(at21).nodes] == ["MaxPool"]


def _with_opset(opset: int) -> onnx.ModelProto:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([node], "g", [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
