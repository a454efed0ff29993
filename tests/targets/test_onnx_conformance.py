"""ONNX backend conformance node cases, through import_onnx -> lower -> llvm -> run.

The onnx wheel ships the case generators (not the .pb data), so the cases are generated in memory
by ``collect_testcases`` (a few seconds). A case belongs to the op of its model's last node (the
op under test; earlier nodes only feed it); only cases whose ops are all in SUPPORTED_OPS run,
each op's cases in one test. The function-expanded variants
(``*_expanded``) are left out: they test other ops' bodies and would double the run time. Models
outside opsets 13..21 are converted to opset 21 with onnx's version converter first.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compiler.errors import EffarchError
from compiler.frontends.onnx import import_onnx
from compiler.ir.ops import SUPPORTED_OPS
from targets.lowering.to_relax import lower
from tests.targets import run_lowered

# (rtol, atol) per expected dtype; integers and booleans compare exactly.
TOLERANCE = {
    np.dtype("float16"): (1e-2, 1e-3),
    np.dtype("float32"): (1e-3, 1e-5),  # ONNX's own rtol: some expected outputs have 4 digits
    np.dtype("float64"): (1e-3, 1e-7),
}

# Graph inputs that ops need as compile-time constants: (op, input index). The test data's values
# become initializers, as a deployed model would carry them.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,), "Pad": (1, 2, 3),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "Trilu": (1,), "Dropout": (1, 2),
}

# Cases needing what effarch does not support, by name pattern: each must fail with an EffarchError.
EXCLUDED: dict[str, str] = {
    r"_uint(16|32|64)$|_u?int[24]|float[48]|FLOAT[48]|U?INT[24]|_e[45]m[23]|_e8m0": (
        "element type outside effarch's dtypes"),
    r"STRING|_string": "string tensors",
    r"_sequence|_opt$": "sequence and optional types",
    r"training_mode|test_training_dropout(_default)?(_mask)?$": "training-mode BatchNormalization/Dropout",
    r"mod_.*fmod_0": "float Mod with fmod=0 is opset 28 (effarch follows opset 21)",
    r"empty_set(_bool)?$|allowzero_reordered": "zero-size tensors",
    r"range_b?float16": "Range on 16-bit floats is opset 27",
    r"maxpool_with_argmax": "MaxPool's Indices output",
    r"convtranspose_3d": "3-D ConvTranspose",
    r"split_zero_size": "zero-size tensors",
}


@dataclass
class Outcome:
    passed: list[str]
    excluded: list[str]


def _collect() -> dict[str, list[onnx.backend.test.case.test_case.TestCase]]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        cases = collect_testcases()
    by_op: dict[str, list] = {op: [] for op in SUPPORTED_OPS}
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        if case.name.endswith("_expanded") or not ops <= SUPPORTED_OPS:
            continue
        # The op under test is the last node's; earlier ones (Constant, Shape) only feed it.
        by_op[case.model.graph.node[-1].op_type].append(case)
    return by_op


CASES = _collect()


def _array(x: object) -> np.ndarray:
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list | dict | type(None)):
        raise EffarchError(f"test data of type {type(x).__name__} is not a tensor")
    return np.asarray(x)


def _prepare(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """Convert to opset 21 when needed; freeze shape-like graph inputs into initializers."""
    model = _to_opset_21(model)
    feeds = {i.name: _array(x) for i, x in zip(model.graph.input, inputs, strict=False)}
    frozen = {n.input[i] for n in model.graph.node for i in SHAPE_INPUTS.get(n.op_type, ())
              if i < len(n.input)} & set(feeds)
    for name in frozen:
        model.graph.initializer.append(numpy_helper.from_array(feeds.pop(name), name))
    kept = [i for i in model.graph.input if i.name not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, feeds


def _to_opset_21(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if 13 <= version <= 21:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    try:
        return onnx.version_converter.convert_version(model, 21)
    except Exception:  # the converter raises bare RuntimeErrors and others
        # No adapter (e.g. 22 -> 21, a bump that only added element types): relabel the model
        # and keep it if it checks at opset 21; otherwise import_onnx rejects its opset.
        relabelled = onnx.ModelProto()
        relabelled.CopyFrom(model)
        next(o for o in relabelled.opset_import if o.domain in ("", "ai.onnx")).version = 21
        try:
            onnx.checker.check_model(relabelled, full_check=True)
        except Exception:
            return model
        return relabelled


def _check(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.name == "bfloat16":  # numpy's testing sees no NaN in ml_dtypes' bfloat16
        got, want = got.astype(np.float32), want.astype(np.float32)
    if want.dtype in TOLERANCE:
        rtol, atol = TOLERANCE[want.dtype]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def _run_case(case: onnx.backend.test.case.test_case.TestCase) -> None:
    inputs, outputs = case.data_sets[0]
    model, feeds = _prepare(case.model, [_array(x) for x in inputs])
    got = run_lowered(lower(import_onnx(model)), feeds)
    assert len(got) == len(outputs), f"{case.name}: {len(got)} outputs, expected {len(outputs)}"
    for g, w in zip(got, outputs, strict=True):
        _check(g, _array(w), case.name)


def _exclusion(name: str) -> str | None:
    return next((reason for pattern, reason in EXCLUDED.items() if re.search(pattern, name)), None)


def run_op_cases(op: str) -> Outcome:
    outcome = Outcome([], [])
    for case in CASES[op]:
        if _exclusion(case.name) is not None:
            with pytest.raises(EffarchError):
                _run_case(case)
            outcome.excluded.append(case.name)
        else:
            _run_case(case)
            outcome.passed.append(case.name)
    return outcome


@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_conformance(op: str) -> None:
    outcome = run_op_cases(op)
    assert outcome.passed, f"{op}: no conformance case passes (excluded: {outcome.excluded})"
