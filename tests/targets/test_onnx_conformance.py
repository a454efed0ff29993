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
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    "Trilu": (1,), "Dropout": (1, 2), "Resize": (1, 2, 3),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceSumSquare": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "RNN": (4,), "GRU": (4,), "LSTM": (4,),
    "TopK": (1,), "CumSum": (1,), "CumProd": (1,),
    "OneHot": (1,), "ReverseSequence": (1,), "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,),
    "CenterCropPad": (1,), "AffineGrid": (1,), "Col2Im": (1, 2), "MaxUnpool": (2,),
}

# What does not pass, with the reason: whole ops ([ops]), name patterns ([patterns]) and single cases
# ([cases]). A listed case of a supported op must fail with a one-line EffarchError; one that passes
# fails the test (the list stays true).
EXCLUSIONS_FILE = Path(__file__).with_name("conformance_exclusions.toml")
EXCLUSIONS: dict[str, dict[str, str]] = tomllib.loads(EXCLUSIONS_FILE.read_text())
REQUIRED_RATE = 0.90  # issue 11: at least 90% of the cases onnxruntime's CPU provider runs


@dataclass
class Outcome:
    passed: list[str]
    excluded: list[str]


def _all_cases() -> list[onnx.backend.test.case.test_case.TestCase]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        return [c for c in collect_testcases() if not c.name.endswith("_expanded")]


# Ops ONNX removed before opset 13: their (old-opset) cases reach the IR as the op that replaced
# them, through the version converter that import (and _prepare) applies.
CONVERTED_OPS = {"Upsample": "Resize", "Scatter": "ScatterElements"}


def _op(node: onnx.NodeProto) -> str:
    return CONVERTED_OPS.get(node.op_type, node.op_type)


def _by_op(cases: list) -> dict[str, list[onnx.backend.test.case.test_case.TestCase]]:
    by_op: dict[str, list] = {op: [] for op in SUPPORTED_OPS}
    for case in cases:
        if {_op(n) for n in case.model.graph.node} <= SUPPORTED_OPS:
            # The op under test is the last node's; earlier ones (Constant, Shape) only feed it.
            by_op[_op(case.model.graph.node[-1])].append(case)
    return by_op


ALL_CASES = _all_cases()
CASES = _by_op(ALL_CASES)


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


def _exclusion(case: onnx.backend.test.case.test_case.TestCase) -> str | None:
    """Why ``case`` does not pass (from EXCLUSIONS_FILE), or None when it must pass."""
    if case.name in EXCLUSIONS["cases"]:
        return EXCLUSIONS["cases"][case.name]
    pattern = next((r for p, r in EXCLUSIONS["patterns"].items() if re.search(p, case.name)), None)
    if pattern is not None:
        return pattern
    unsupported = sorted({_op(n) for n in case.model.graph.node} - SUPPORTED_OPS)
    if unsupported:
        return EXCLUSIONS["ops"].get(unsupported[0], f"NO REASON GIVEN for op {unsupported[0]}")
    return None


def run_op_cases(op: str) -> Outcome:
    outcome = Outcome([], [])
    for case in CASES[op]:
        if _exclusion(case) is not None:
            with pytest.raises(EffarchError) as info:
                _run_case(case)
            assert "\n" not in str(info.value).strip(), f"{case.name}: not a one-line error: {info.value}"
            outcome.excluded.append(case.name)
        else:
            _run_case(case)
            outcome.passed.append(case.name)
    return outcome


@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_conformance(op: str) -> None:
    outcome = run_op_cases(op)
    assert outcome.passed, f"{op}: no conformance case passes (excluded: {outcome.excluded})"


def _tensor_types_only(model: onnx.ModelProto) -> bool:
    """Every graph input and output is a numeric or boolean tensor (no strings, sequences, maps)."""
    for v in [*model.graph.input, *model.graph.output]:
        if v.type.WhichOneof("value") != "tensor_type" or v.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return False
    return all(i.data_type != onnx.TensorProto.STRING for i in model.graph.initializer)


def _onnxruntime_passes(case: onnx.backend.test.case.test_case.TestCase) -> bool:
    """onnxruntime's CPU provider runs the case as written and matches its expected outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    inputs, outputs = case.data_sets[0]
    try:
        sess = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: _array(x) for i, x in zip(case.model.graph.input, inputs, strict=False)})
        for g, w in zip(got, outputs, strict=True):
            _check(np.asarray(g), _array(w), case.name)
    except Exception:  # noqa: BLE001  (any failure of onnxruntime means it does not support the case)
        return False
    return True


def test_conformance_rate_and_every_failure_has_a_reason() -> None:
    """Of the node cases onnxruntime's CPU provider runs correctly (numeric and boolean tensors), at
    least REQUIRED_RATE pass through effarch (the per-op tests above check each one); every other case
    has a reason in EXCLUSIONS_FILE."""
    universe = [c for c in ALL_CASES if _tensor_types_only(c.model) and _onnxruntime_passes(c)]
    reasons = {c.name: _exclusion(c) for c in universe}
    missing = sorted(n for n, r in reasons.items() if r is not None and r.startswith("NO REASON"))
    assert not missing, f"cases failing with no reason in {EXCLUSIONS_FILE.name}: {missing}"
    passing = sum(r is None for r in reasons.values())
    rate = passing / len(universe)
    print(f"conformance: {passing} of {len(universe)} cases onnxruntime runs pass ({rate:.1%}); "
          f"{len(universe) - passing} listed with reasons in {EXCLUSIONS_FILE.name}")
    assert rate >= REQUIRED_RATE, f"only {passing}/{len(universe)} = {rate:.1%} pass; {REQUIRED_RATE:.0%} required"


def test_exclusions_are_used() -> None:
    """Every entry of EXCLUSIONS_FILE matches a case (no stale lines)."""
    names = {c.name for c in ALL_CASES}
    ops = {n.op_type for c in ALL_CASES for n in c.model.graph.node}
    assert set(EXCLUSIONS["cases"]) <= names, set(EXCLUSIONS["cases"]) - names
    assert all(any(re.search(p, n) for n in names) for p in EXCLUSIONS["patterns"])
    assert set(EXCLUSIONS["ops"]) <= ops - SUPPORTED_OPS, set(EXCLUSIONS["ops"]) & SUPPORTED_OPS
