"""Seeded random valid ONNX graphs over the supported ops, for fuzzing passes and backends.

``fuzz_case(seed)`` builds a small DAG (one to three float inputs, several outputs) by drawing ops
from a menu that covers elementwise unary/binary ops with broadcasting, MatMul/Gemm, Conv and
ConvTranspose (groups, strides, pads, dilations), pooling, reductions, normalizations, shape and
data movement ops, Where/Clip/Cast and Shape-computed reshapes. Each op's attributes are drawn at
random and its output type comes from ONNX's own per-node shape inference; a draw that inference
rejects is dropped and another op is drawn, so every graph is valid. The same seed gives the same
model and the same inputs.

Inputs stay in each op's domain: Log, Sqrt, Reciprocal, Div and Pow read ``|x| + 0.5``, Exp reads
``Clip(x, -5, 5)``. Ops that jump (Floor, Round, Sign, comparisons, ArgMax, Cast to integers,
QuantizeLinear) only read *exact* values: graph inputs and what selection ops (Abs, Max, Slice,
MaxPool, ...) make of them, which every correct implementation computes bit for bit; on a rounded
value a last-bit difference would flip the jump and report a mismatch that is not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.ir.ops import IR_OPSET

T = TypeVar("T")

F32, I64, I32, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL
MAX_ELEMENTS = 2048  # values stay small: the fuzzer's cost is building, not running
MAX_OUTPUTS = 4


@dataclass
class FuzzCase:
    seed: int
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]


@dataclass
class _Val:
    name: str
    elem: int
    shape: tuple[int, ...]
    exact: bool = False  # computed bit for bit by any correct implementation (see module doc)
    data: np.ndarray | None = None  # the payload of a constant


@dataclass
class _Builder:
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    values: list[_Val] = field(default_factory=list)  # non-constant values, in creation order
    consts: dict[str, _Val] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    count: int = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, array: np.ndarray | np.generic, hint: str = "c") -> _Val:
        name = self.fresh(hint)
        array = np.asarray(array)
        self.inits.append(numpy_helper.from_array(array, name))
        v = _Val(name, helper.np_dtype_to_tensor_dtype(array.dtype), tuple(array.shape), True, array)
        self.consts[name] = v
        return v

    def emit(self, op: str, inputs: list[_Val | None], attrs: dict | None = None, outputs: int = 1,
             exact: bool = False) -> list[_Val] | None:
        """Add ``op`` if ONNX shape inference accepts it and its outputs are small and non-empty."""
        names = [self.fresh("v") for _ in range(outputs)]
        node = helper.make_node(op, ["" if v is None else v.name for v in inputs], names,
                                name=f"n{self.count}", **(attrs or {}))
        typed = [v for v in inputs if v is not None]
        types = {v.name: helper.make_tensor_type_proto(v.elem, v.shape) for v in typed}
        data = {v.name: numpy_helper.from_array(v.data, v.name) for v in typed if v.data is not None}
        try:
            out = onnx.shape_inference.infer_node_outputs(
                onnx.defs.get_schema(op, IR_OPSET), node, types, data,
                opset_imports=[helper.make_opsetid("", IR_OPSET)])
        except Exception:  # onnx raises several types for an invalid draw; the draw is dropped
            return None
        made = [_typed(n, out.get(n), exact) for n in names]
        if any(v is None for v in made):
            return None
        self.nodes.append(node)
        self.used.update(v.name for v in typed)
        result = [v for v in made if v is not None]
        self.values.extend(result)
        return result

    def one(self, op: str, inputs: list[_Val | None], attrs: dict | None = None, exact: bool = False) -> _Val | None:
        made = self.emit(op, inputs, attrs, 1, exact)
        return None if made is None else made[0]

    def pick(self, elem: int = F32, *, exact: bool = False, rank: tuple[int, int] = (0, 9)) -> _Val | None:
        """A value of the element type, favouring recent ones so that graphs grow deep as well as wide."""
        fits = [v for v in self.values if v.elem == elem and (v.exact or not exact)
                and rank[0] <= len(v.shape) <= rank[1]]
        if not fits:
            return None
        weights = np.arange(1, len(fits) + 1, dtype=np.float64) ** 1.5
        return fits[int(self.rng.choice(len(fits), p=weights / weights.sum()))]

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]


def _typed(name: str, t: onnx.TypeProto | None, exact: bool) -> _Val | None:
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    shape = tuple(d.dim_value for d in dims)
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    return _Val(name, t.tensor_type.elem_type, shape, exact)


def fuzz_case(seed: int, ops: int | None = None) -> FuzzCase:
    """The random graph and inputs of ``seed`` (``ops`` draws, 3 to 9 unless given)."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    inputs = _graph_inputs(b)
    target = int(rng.integers(3, 10)) if ops is None else ops
    made = attempts = 0
    while made < target and attempts < 20 * target:
        attempts += 1
        made += bool(_MENU[int(rng.integers(len(_MENU)))](b))
    return FuzzCase(seed, _model(b, seed, inputs), {v.name: _draw(rng, v.shape) for v in inputs})


def _draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _graph_inputs(b: _Builder) -> list[_Val]:
    rank = int(b.rng.integers(1, 5))
    first = tuple(int(d) for d in b.rng.integers(1, 7, rank))
    if rank == 4:
        first = (int(b.rng.integers(1, 3)), int(b.rng.integers(1, 5)), *(int(d) for d in b.rng.integers(3, 8, 2)))
    shapes = [first]
    for _ in range(int(b.rng.integers(0, 3))):
        # a second input of the same shape, or one that broadcasts against the first
        shapes.append(first if b.rng.random() < 0.5 else _broadcastable(b.rng, first))
    made = [_Val(f"x{i}", F32, s, True) for i, s in enumerate(shapes)]
    b.values.extend(made)
    return made


def _broadcastable(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with ``shape``: a suffix of it with some dims set to 1."""
    keep = int(rng.integers(0, len(shape) + 1))
    tail = shape[len(shape) - keep:]
    return tuple(1 if rng.random() < 0.4 else d for d in tail)


def _model(b: _Builder, seed: int, inputs: list[_Val]) -> onnx.ModelProto:
    input_names = {v.name for v in inputs}
    leaves = [v for v in b.values if v.name not in b.used and v.name not in input_names]
    if b.rng.random() < 0.3 and len(leaves) > 1:
        leaves = leaves[1:]  # a dead branch for dead-code elimination to remove
    inner = [v for v in b.values if v.name in b.used and v.name not in input_names]
    if inner and b.rng.random() < 0.3:
        leaves.append(inner[int(b.rng.integers(len(inner)))])  # a value both used and returned
    outputs = leaves[-MAX_OUTPUTS:] or [_fallback(b, inputs[0])]
    graph = helper.make_graph(
        b.nodes, f"fuzz{seed}", [helper.make_tensor_value_info(v.name, v.elem, v.shape) for v in inputs],
        [helper.make_tensor_value_info(v.name, v.elem, v.shape) for v in outputs], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", IR_OPSET)])
    model.ir_version = 10  # what onnxruntime 1.2x reads
    onnx.checker.check_model(model, full_check=True)
    return model


def _fallback(b: _Builder, x: _Val) -> _Val:
    made = b.one("Relu", [x])
    assert made is not None, "Relu accepts any float tensor"
    return made


# ---- the menu: each entry tries one op on values of the pool and says whether it added it ----

Op = Callable[[_Builder], bool]

SMOOTH_UNARY = ("Abs", "Neg", "Erf", "Sin", "Cos", "Relu", "Sigmoid", "HardSwish", "Tanh", "Softplus",
                "Identity", "Dropout")
SELECTING_UNARY = ("Abs", "Neg", "Relu", "Identity")  # keep exactness
JUMPING_UNARY = ("Floor", "Ceil", "Round", "Sign")
POSITIVE_UNARY = ("Log", "Sqrt", "Reciprocal")


def _unary(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    op = str(b.choice(SMOOTH_UNARY))
    return b.one(op, [x], exact=x.exact and op in SELECTING_UNARY) is not None


def _unary_with_attrs(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    alpha = float(b.rng.uniform(0.05, 1.5))
    choices: list[tuple[str, dict]] = [
        ("LeakyRelu", {"alpha": alpha}), ("Elu", {"alpha": alpha}),
        ("HardSigmoid", {"alpha": alpha / 4, "beta": 0.5}), ("Gelu", {"approximate": b.choice(["none", "tanh"])})]
    op, attrs = b.choice(choices)
    return b.one(op, [x], attrs) is not None


def _positive(b: _Builder, x: _Val) -> _Val | None:
    """``|x| + 0.5``: in the domain of Log, Sqrt, Reciprocal and Pow bases, away from 0 for Div."""
    a = b.one("Abs", [x])
    return None if a is None else b.one("Add", [a, b.const(np.float32(0.5))])


def _domain_unary(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    if b.rng.random() < 0.3:
        clipped = b.one("Clip", [x, b.const(np.float32(-5)), b.const(np.float32(5))], exact=x.exact)
        return clipped is not None and b.one("Exp", [clipped]) is not None
    p = _positive(b, x)
    return p is not None and b.one(str(b.choice(POSITIVE_UNARY)), [p]) is not None


def _jumping(b: _Builder) -> bool:
    x = b.pick(exact=True)
    if x is None:
        return False
    return b.one(str(b.choice(JUMPING_UNARY)), [x], exact=True) is not None


def _partner(b: _Builder, x: _Val, elem: int = F32) -> _Val:
    """A second operand that broadcasts with ``x``: a pool value or a new constant."""
    others = [v for v in b.values if v.elem == elem and v is not x and _broadcasts(v.shape, x.shape)]
    if others and b.rng.random() < 0.6:
        return others[int(b.rng.integers(len(others)))]
    shape = _broadcastable(b.rng, x.shape)
    if b.rng.random() < 0.3:
        shape = (*shape[:-1], 1) if shape else shape
    if elem == F32:
        return b.const(b.rng.standard_normal(shape).astype(np.float32))
    return b.const(b.rng.integers(-3, 4, shape).astype(helper.tensor_dtype_to_np_dtype(elem)))


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _binary(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    y = _partner(b, x)
    op = str(b.choice(["Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean", "Div", "Pow", "PRelu"]))
    if op == "Div":
        y = _positive(b, y) or y
    if op == "Pow":
        base = _positive(b, x)
        expo = b.const(np.float32(b.choice([2.0, 3.0, 0.5, -1.0, 1.5])))
        return base is not None and b.one("Pow", [base, expo]) is not None
    if op in ("Sum", "Mean") and b.rng.random() < 0.5:
        return b.one(op, [x, y, _partner(b, x)]) is not None
    # swapped operands, except where the second is special: a guarded divisor, PRelu's slope
    inputs = [y, x] if op not in ("PRelu", "Div") and b.rng.random() < 0.3 else [x, y]
    exact = op in ("Max", "Min") and x.exact and y.exact
    return b.one(op, list(inputs), exact=exact) is not None


def _compare(b: _Builder) -> bool:
    x = b.pick(exact=True)
    if x is None:
        return False
    y = _partner(b, x)
    if not y.exact:
        return False
    op = str(b.choice(["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]))
    cond = b.one(op, [x, y], exact=True)
    if cond is None:
        return False
    if b.rng.random() < 0.4:
        other = [v for v in b.values if v.elem == BOOL and v is not cond and _broadcasts(v.shape, cond.shape)]
        if other:
            logic = b.one(str(b.choice(["And", "Or", "Xor"])), [cond, other[-1]], exact=True)
            cond = logic or cond
        else:
            cond = b.one("Not", [cond], exact=True) or cond
    return _use_condition(b, cond, x)


def _use_condition(b: _Builder, cond: _Val, x: _Val) -> bool:
    """A comparison's result goes into Where or is cast to float; a bool graph output is fine too."""
    r = b.rng.random()
    if r < 0.5:
        other = _partner(b, x)
        return b.one("Where", [cond, x, other], exact=x.exact and other.exact) is not None
    if r < 0.8:
        return b.one("Cast", [cond], {"to": F32}, exact=True) is not None
    return True


def _clip(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    lo, hi = sorted(float(v) for v in b.rng.uniform(-1.5, 1.5, 2))
    which = int(b.rng.integers(3))
    bounds: list[_Val | None] = [b.const(np.float32(lo)), b.const(np.float32(hi))]
    if which == 1:
        bounds = [None, bounds[1]]
    elif which == 2:
        bounds = bounds[:1]
    return b.one("Clip", [x, *bounds], exact=x.exact) is not None


def _cast(b: _Builder) -> bool:
    x = b.pick(exact=True)
    if x is None:
        return False
    scaled = b.one("Mul", [x, b.const(np.float32(4.0))], exact=True)  # times 4: exact, more distinct ints
    if scaled is None:
        return False
    to = int(b.choice([I64, I32]))
    ints = b.one("Cast", [scaled], {"to": to}, exact=True)
    if ints is None:
        return False
    op = str(b.choice(["Add", "Mul", "Max", "Min", "Sub", "Mod", "Div"]))
    if op in ("Mod", "Div"):
        divisor = b.const(np.array(int(b.choice([2, 3, -3])), helper.tensor_dtype_to_np_dtype(to)))
        ints = b.one(op, [ints, divisor], exact=True) or ints
    else:
        ints = b.one(op, [ints, _partner(b, ints, to)], exact=True) or ints
    if b.rng.random() < 0.5:
        return True  # an integer output, or a later CastLike
    if b.rng.random() < 0.5:
        return b.one("CastLike", [ints, x], exact=True) is not None
    return b.one("Cast", [ints], {"to": F32}, exact=True) is not None


def _matmul(b: _Builder) -> bool:
    x = b.pick(rank=(1, 4))
    if x is None:
        return False
    k = x.shape[-1]
    n = int(b.rng.integers(1, 9))
    r = b.rng.random()
    if r < 0.15:
        w = b.const(b.rng.standard_normal((k,)).astype(np.float32))  # a vector: drops the last dim
    elif r < 0.35 and len(x.shape) >= 2:
        batch = x.shape[:-2]
        w = b.const(b.rng.standard_normal((*batch, k, n)).astype(np.float32))
    else:
        others = [v for v in b.values if v.elem == F32 and len(v.shape) == 2 and v.shape[0] == k and v is not x]
        w = others[-1] if others and b.rng.random() < 0.5 else b.const(
            (b.rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32))
    y = b.one("MatMul", [x, w])
    if y is None or b.rng.random() < 0.5:
        return y is not None
    return b.one("Add", [y, b.const(b.rng.standard_normal(y.shape[-1:]).astype(np.float32))]) is not None


def _gemm(b: _Builder) -> bool:
    x = b.pick(rank=(2, 2))
    if x is None:
        return False
    trans_a, trans_b = int(b.rng.integers(2)), int(b.rng.integers(2))
    m, k = x.shape[::-1] if trans_a else x.shape
    n = int(b.rng.integers(1, 9))
    w = b.const(b.rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32))
    c_shape = b.choice([None, (n,), (1, n), (m, n), (m, 1), ()])
    inputs = [x, w] + ([] if c_shape is None else [b.const(b.rng.standard_normal(c_shape).astype(np.float32))])
    attrs: dict[str, float] = {"transA": trans_a, "transB": trans_b}
    if b.rng.random() < 0.4:
        attrs |= {"alpha": float(b.rng.uniform(0.5, 2)), "beta": float(b.rng.uniform(0.5, 2))}
    return b.one("Gemm", list(inputs), attrs) is not None


def _conv(b: _Builder) -> bool:
    x = b.pick(rank=(3, 4))
    if x is None:
        return False
    spatial = len(x.shape) - 2
    c = x.shape[1]
    groups = int(b.choice([g for g in range(1, c + 1) if c % g == 0]))
    m = groups * int(b.rng.integers(1, 4))
    kernel = [int(k) for k in b.rng.integers(1, 4, spatial)]
    attrs: dict = {"group": groups, "kernel_shape": kernel}
    attrs |= _window_attrs(b, kernel, spatial, dilate=True)
    transpose = b.rng.random() < 0.25
    if not _window_fits(x, attrs):
        return False
    w_shape = (c, m // groups, *kernel) if transpose else (m, c // groups, *kernel)
    fan_in = math.prod(w_shape[1:])
    inputs = [x, b.const((b.rng.standard_normal(w_shape) / math.sqrt(fan_in)).astype(np.float32))]
    if b.rng.random() < 0.6:
        inputs.append(b.const(b.rng.standard_normal((m,)).astype(np.float32)))
    if transpose:
        attrs.pop("auto_pad", None)
        strides = attrs.get("strides", [1] * spatial)
        if b.rng.random() < 0.3:
            attrs["output_padding"] = [int(b.rng.integers(0, s)) for s in strides]
    y = b.one("ConvTranspose" if transpose else "Conv", list(inputs), attrs)
    if y is None or b.rng.random() < 0.6:
        return y is not None
    return _batchnorm_on(b, y) is not None


def _window_attrs(b: _Builder, kernel: list[int], spatial: int, dilate: bool) -> dict:
    """Strides, dilations and pads (explicit below the window, or auto_pad) for a conv or pool."""
    attrs: dict = {}
    if b.rng.random() < 0.4:
        attrs["strides"] = [int(s) for s in b.rng.integers(1, 3, spatial)]
    if dilate and b.rng.random() < 0.3:
        attrs["dilations"] = [int(d) for d in b.rng.integers(1, 3, spatial)]
    r = b.rng.random()
    if r < 0.15 and "dilations" not in attrs and _strides_within(attrs, kernel):
        # onnxruntime sizes SAME windows its own way with dilations, and pads < 0 past the kernel
        attrs["auto_pad"] = str(b.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    elif r < 0.6:
        attrs["pads"] = [int(b.rng.integers(0, k)) for k in kernel * 2]
    return attrs


def _strides_within(attrs: dict, kernel: list[int]) -> bool:
    return all(s <= k for s, k in zip(attrs.get("strides", [1] * len(kernel)), kernel, strict=True))


def _window_fits(x: _Val, attrs: dict) -> bool:
    """The (dilated) window fits in the padded input: ONNX's shape inference wrongly gives size 1 otherwise."""
    kernel = attrs["kernel_shape"]
    spatial = len(kernel)
    pads = attrs.get("pads", [0] * 2 * spatial)
    dilations = attrs.get("dilations", [1] * spatial)
    return all(x.shape[2 + i] + pads[i] + pads[spatial + i] >= (kernel[i] - 1) * dilations[i] + 1
               for i in range(spatial))


def _batchnorm_on(b: _Builder, x: _Val) -> _Val | None:
    c = x.shape[1]
    stats = [b.rng.uniform(0.5, 1.5, c), b.rng.standard_normal(c), b.rng.standard_normal(c), b.rng.uniform(0.5, 2, c)]
    made = b.one("BatchNormalization", [x, *(b.const(s.astype(np.float32)) for s in stats)],
                 {"epsilon": float(b.choice([1e-5, 1e-3]))})
    return None if made is None or b.rng.random() < 0.5 else b.one("Relu", [made])


def _batchnorm(b: _Builder) -> bool:
    x = b.pick(rank=(2, 4))
    return x is not None and _batchnorm_on(b, x) is not None


def _pool(b: _Builder) -> bool:
    exact_wanted = b.rng.random() < 0.5
    x = b.pick(rank=(3, 4), exact=exact_wanted)
    if x is None:
        return False
    spatial = len(x.shape) - 2
    if b.rng.random() < 0.25:
        op = str(b.choice(["GlobalAveragePool", "GlobalMaxPool"]))
        return b.one(op, [x], exact=x.exact and op == "GlobalMaxPool") is not None
    kernel = [int(k) for k in b.rng.integers(1, 4, spatial)]
    is_max = b.rng.random() < 0.5
    attrs: dict = {"kernel_shape": kernel} | _window_attrs(b, kernel, spatial, dilate=is_max)
    if b.rng.random() < 0.3 and "auto_pad" not in attrs and _strides_within(attrs, kernel):
        attrs["ceil_mode"] = 1  # onnxruntime sizes ceil_mode windows its own way past these bounds
    if not _window_fits(x, attrs):
        return False
    if not is_max and b.rng.random() < 0.5:
        attrs["count_include_pad"] = 1
    return b.one("MaxPool" if is_max else "AveragePool", [x], attrs, exact=x.exact and is_max) is not None


def _along_an_axis(draw: Callable[[_Builder, _Val, int], bool]) -> Op:
    """A menu entry for an op along one axis: ``draw(b, x, axis)`` with a pool value of rank 1-4 and
    an axis of it (negative ones too), drawn in that order."""
    def entry(b: _Builder) -> bool:
        x = b.pick(rank=(1, 4))
        if x is None:
            return False
        rank = len(x.shape)
        return draw(b, x, int(b.rng.integers(-rank, rank)))
    return entry


def _reduce(b: _Builder) -> bool:
    x = b.pick(rank=(1, 4))
    if x is None:
        return False
    rank = len(x.shape)
    if b.rng.random() < 0.25 and x.exact:
        op = str(b.choice(["ArgMax", "ArgMin"]))
        attrs = {"axis": int(b.rng.integers(-rank, rank)), "keepdims": int(b.rng.integers(2)),
                 "select_last_index": int(b.rng.integers(2))}
        return b.one(op, [x], attrs, exact=True) is not None
    op = str(b.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]))
    count = int(b.rng.integers(0, rank + 1))
    axes = sorted(int(a) for a in b.rng.choice(rank, count, replace=False))
    axes = [a - rank if b.rng.random() < 0.3 else a for a in axes]
    inputs: list[_Val | None] = [x]
    if axes or b.rng.random() < 0.5:
        inputs.append(b.const(np.array(axes, np.int64)))
    exact = x.exact and op in ("ReduceMax", "ReduceMin")
    return b.one(op, inputs, {"keepdims": int(b.rng.integers(2))}, exact=exact) is not None


@_along_an_axis
def _normalize(b: _Builder, x: _Val, axis: int) -> bool:
    rank = len(x.shape)
    r = b.rng.random()
    if r < 0.5:
        return b.one(str(b.choice(["Softmax", "LogSoftmax"])), [x], {"axis": axis}) is not None
    if r < 0.85:
        norm = x.shape[axis:]
        inputs = [x, b.const(b.rng.uniform(0.5, 1.5, norm).astype(np.float32))]
        if b.rng.random() < 0.6:
            inputs.append(b.const(b.rng.standard_normal(norm).astype(np.float32)))
        # epsilon 1e-3, not 1e-5: a row of equal values (a ConstantOfShape fill, an Expand) has a
        # mean off by rounding that 1/sqrt(epsilon) amplifies; at 1e-5 two correct runtimes were
        # 2x the tolerance apart (seed 766), at 1e-3 the rounding stays 10x smaller
        return b.one("LayerNormalization", list(inputs), {"axis": axis, "epsilon": 1e-3}) is not None
    if rank != 4:  # onnxruntime's LRN takes NCHW only
        return False
    attrs = {"size": int(b.choice([1, 3, 5])), "alpha": 1e-3, "beta": 0.75, "bias": float(b.choice([1.0, 2.0]))}
    return b.one("LRN", [x], attrs) is not None


@_along_an_axis
def _concat(b: _Builder, x: _Val, axis: int) -> bool:
    rank = len(x.shape)
    parts = [x]
    for _ in range(int(b.rng.integers(1, 3))):
        same = [v for v in b.values if v.elem == x.elem and len(v.shape) == rank
                and all(d == e for i, (d, e) in enumerate(zip(v.shape, x.shape, strict=True)) if i != axis % rank)]
        if same and b.rng.random() < 0.6:
            parts.append(same[int(b.rng.integers(len(same)))])
        else:
            shape = list(x.shape)
            shape[axis] = int(b.rng.integers(1, 4))
            parts.append(b.const(b.rng.standard_normal(shape).astype(np.float32)))
    return b.one("Concat", list(parts), {"axis": axis}, exact=all(p.exact for p in parts)) is not None


@_along_an_axis
def _split(b: _Builder, x: _Val, axis: int) -> bool:
    n = x.shape[axis]
    if n < 2:
        return False
    if b.rng.random() < 0.5:
        count = int(b.rng.integers(2, min(n, 4) + 1))
        return b.emit("Split", [x], {"axis": axis, "num_outputs": count}, count, exact=x.exact) is not None
    cut = sorted(int(c) for c in b.rng.choice(np.arange(1, n), int(b.rng.integers(1, min(n - 1, 3) + 1)),
                                              replace=False))
    sizes = np.diff([0, *cut, n]).astype(np.int64)
    return b.emit("Split", [x, b.const(sizes)], {"axis": axis}, len(sizes), exact=x.exact) is not None


def _slice(b: _Builder) -> bool:
    x = b.pick(rank=(1, 4))
    if x is None:
        return False
    rank = len(x.shape)
    axes = [int(a) for a in b.rng.choice(rank, int(b.rng.integers(1, rank + 1)), replace=False)]
    starts, ends, steps = [], [], []
    for a in axes:
        n = x.shape[a]
        step = int(b.choice([1, 1, 2, -1, -2]))
        lo, hi = sorted(int(v) for v in b.rng.integers(-n - 1, n + 2, 2))
        starts.append(hi if step < 0 else lo)
        ends.append(lo if step < 0 else hi)
        steps.append(step)
    consts = [b.const(np.array(v, np.int64)) for v in (starts, ends, axes)]
    inputs: list[_Val | None] = [x, *consts]
    if steps != [1] * len(axes) or b.rng.random() < 0.5:
        inputs.append(b.const(np.array(steps, np.int64)))
    return b.one("Slice", inputs, exact=x.exact) is not None


def _transpose(b: _Builder) -> bool:
    x = b.pick(rank=(2, 4))
    if x is None:
        return False
    attrs = {} if b.rng.random() < 0.2 else {"perm": [int(p) for p in b.rng.permutation(len(x.shape))]}
    return b.one("Transpose", [x], attrs, exact=x.exact) is not None


def _reshape(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    r = b.rng.random()
    if r < 0.2:
        return b.one("Flatten", [x], {"axis": int(b.rng.integers(0, len(x.shape) + 1))}, exact=x.exact) is not None
    if r < 0.35:
        return _reshape_by_shape_of(b, x)
    dims = _factor(b.rng, math.prod(x.shape))
    if len(dims) > 1 and b.rng.random() < 0.3:
        dims[int(b.rng.integers(len(dims)))] = -1
    elif dims and len(dims) <= len(x.shape) and b.rng.random() < 0.2:
        i = int(b.rng.integers(len(dims)))
        if dims[i] == x.shape[i]:
            dims[i] = 0  # 0 copies the input's dim
    return b.one("Reshape", [x, b.const(np.array(dims, np.int64))], exact=x.exact) is not None


def _reshape_by_shape_of(b: _Builder, x: _Val) -> bool:
    """Reshape to another value's run-time Shape: the exporters' pattern that folding must resolve."""
    same = [v for v in b.values if v is not x and math.prod(v.shape) == math.prod(x.shape)]
    if not same:
        return False
    shape = b.one("Shape", [same[-1]])
    return shape is not None and b.one("Reshape", [x, shape], exact=x.exact) is not None


def _factor(rng: np.random.Generator, size: int) -> list[int]:
    dims: list[int] = []
    rest = size
    for _ in range(int(rng.integers(1, 4))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = int(divisors[int(rng.integers(len(divisors)))])
        dims.append(d)
        rest //= d
    return [*dims, rest] if rest > 1 or not dims else dims


def _squeeze(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    if ones and b.rng.random() < 0.5:
        axes = [int(a) for a in b.rng.choice(ones, int(b.rng.integers(1, len(ones) + 1)), replace=False)]
        return b.one("Squeeze", [x, b.const(np.array(axes, np.int64))], exact=x.exact) is not None
    out_rank = len(x.shape) + 1
    axis = int(b.rng.integers(-out_rank, out_rank))
    return b.one("Unsqueeze", [x, b.const(np.array([axis], np.int64))], exact=x.exact) is not None


@_along_an_axis
def _gather(b: _Builder, x: _Val, axis: int) -> bool:
    n = x.shape[axis]
    shape = b.choice([(), (int(b.rng.integers(1, 4)),), (2, int(b.rng.integers(1, 3)))])
    indices = b.rng.integers(-n, n, shape).astype(b.choice([np.int64, np.int32]))
    return b.one("Gather", [x, b.const(indices)], {"axis": axis}, exact=x.exact) is not None


def _expand_tile_pad(b: _Builder) -> bool:
    x = b.pick(rank=(1, 4))
    if x is None:
        return False
    r = b.rng.random()
    if r < 0.35:
        shape = [d if d != 1 else int(b.rng.integers(1, 4)) for d in x.shape]
        if b.rng.random() < 0.3:
            shape = [2, *shape]
        return b.one("Expand", [x, b.const(np.array(shape, np.int64))], exact=x.exact) is not None
    if r < 0.6:
        reps = b.rng.integers(1, 3, len(x.shape)).astype(np.int64)
        return b.one("Tile", [x, b.const(reps)], exact=x.exact) is not None
    mode = str(b.choice(["constant", "reflect", "edge"]))
    high = [d if mode == "reflect" else 3 for d in x.shape]
    pads = np.array([int(b.rng.integers(0, h)) for h in high * 2], np.int64)
    inputs: list[_Val | None] = [x, b.const(pads)]
    if mode == "constant" and b.rng.random() < 0.5:
        inputs.append(b.const(np.float32(b.rng.standard_normal())))
    return b.one("Pad", inputs, {"mode": mode}, exact=x.exact) is not None


def _trilu(b: _Builder) -> bool:
    x = b.pick(rank=(2, 4))
    if x is None:
        return False
    inputs: list[_Val | None] = [x]
    if b.rng.random() < 0.6:
        inputs.append(b.const(np.array(int(b.rng.integers(-2, 3)), np.int64)))
    return b.one("Trilu", inputs, {"upper": int(b.rng.integers(2))}, exact=x.exact) is not None


def _generated(b: _Builder) -> bool:
    """Values made inside the graph: ConstantOfShape, Range, Constant, Size, added to a pool value."""
    x = b.pick(rank=(1, 4))
    if x is None:
        return False
    r = b.rng.random()
    if r < 0.3:
        value = numpy_helper.from_array(np.array([b.rng.standard_normal()], np.float32), "value")
        made = b.one("ConstantOfShape", [b.const(np.array(x.shape, np.int64))], {"value": value})
    elif r < 0.55:
        n = x.shape[-1]
        start, delta = float(b.rng.integers(-3, 3)), float(b.choice([0.5, 1.0, -1.0]))
        lim = start + delta * n
        made = b.one("Range", [b.const(np.float32(start)), b.const(np.float32(lim)), b.const(np.float32(delta))])
    elif r < 0.8:
        value = numpy_helper.from_array(b.rng.standard_normal(x.shape[-1:]).astype(np.float32), "value")
        made = b.one("Constant", [], {"value": value})
    else:
        size = b.one("Size", [x])
        made = None if size is None else b.one("Cast", [size], {"to": F32})
    return made is not None and b.one("Add", [x, made]) is not None


def _quantize(b: _Builder) -> bool:
    """QuantizeLinear -> DequantizeLinear with a power-of-two scale, on an exact value."""
    x = b.pick(exact=True)
    if x is None:
        return False
    scale = b.const(np.float32(2.0 ** int(b.rng.integers(-6, -1))))
    if b.rng.random() < 0.5:
        zero = b.const(np.uint8(b.rng.integers(0, 256)))
    else:
        zero = b.const(np.int8(b.rng.integers(-20, 20)))
    q = b.one("QuantizeLinear", [x, scale, zero], exact=True)
    return q is not None and b.one("DequantizeLinear", [q, scale, zero], exact=True) is not None


_MENU: list[Op] = [
    _unary, _unary, _unary_with_attrs, _domain_unary, _jumping, _binary, _binary, _binary, _compare, _clip,
    _cast, _matmul, _matmul, _gemm, _conv, _conv, _batchnorm, _pool, _reduce, _normalize, _concat, _split,
    _slice, _transpose, _reshape, _squeeze, _gather, _expand_tile_pad, _trilu, _generated, _quantize,
]
