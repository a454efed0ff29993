"""Checks of scheduled GPU kernels that need no GPU: SASS read back from a fatbin, and how many times a
scheduled kernel stores each element of a buffer (its loop nest evaluated over every iteration)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from tvm import s_tir, tirx

from targets.cuda import find_cuobjdump

# The GEMM kinds both GEMM rules' tests build: (name, kind, dims, GEMM as batch x m x n x k); kinds and
# dims as ``targets.schedules.tensorcore_kernels.gemm_kernel`` takes them.
GEMM_CASES = [
    ("gemm_49x512x4608", "matmul", (49, 512, 4608), (1, 49, 512, 4608)),
    ("gemm_128x384x1536", "matmul", (128, 384, 1536), (1, 128, 384, 1536)),
    ("attention_12x128x128x32", "bmm", (12, 128, 128, 32), (12, 128, 128, 32)),
    ("conv1x1_256to512_14", "conv", (256, 14, 512, 1), (1, 196, 512, 256)),
    ("conv3x3_512_7", "conv", (512, 7, 512, 3), (1, 49, 512, 4608)),
]


def sass_by_function(fatbin: bytes, tmp: Path) -> dict[str, str]:
    """``cuobjdump -sass`` of ``fatbin``, one entry per kernel."""
    path = tmp / "kernels.fatbin"
    path.write_bytes(fatbin)
    tool = find_cuobjdump()
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    text = subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, check=True, env=env).stdout
    parts = re.split(r"\n\s*Function : (\S+)\n", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _realizes(stmt: object) -> list[s_tir.SBlockRealize]:
    """Every block realization nested in ``stmt``."""
    found = [stmt] if isinstance(stmt, s_tir.SBlockRealize) else []
    children = list(stmt.seq) if isinstance(stmt, tirx.SeqStmt) else \
        [getattr(stmt, a) for a in ("block", "body", "then_case", "else_case") if getattr(stmt, a, None) is not None]
    return found + [r for child in children for r in _realizes(child)]


class _Env:
    """Variables' values, found by identity: two loops of one nest may carry the same name."""

    def __init__(self) -> None:
        self.pairs: list[tuple[tirx.Var, np.ndarray]] = []

    def __setitem__(self, var: tirx.Var, value: np.ndarray) -> None:
        self.pairs.append((var, value))

    def __getitem__(self, var: tirx.Var) -> np.ndarray:
        return next(value for v, value in reversed(self.pairs) if v.same_as(var))


def _eval_index(expr: tirx.PrimExpr, env: _Env) -> np.ndarray:
    """An integer TIR index expression evaluated over numpy arrays of its variables' values."""
    binary = {tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply, tirx.FloorDiv: np.floor_divide,
              tirx.FloorMod: np.mod, tirx.LT: np.less, tirx.LE: np.less_equal, tirx.And: np.logical_and}
    if isinstance(expr, tirx.IntImm):
        return np.asarray(int(expr.value))
    if isinstance(expr, tirx.Var):
        return env[expr]
    if isinstance(expr, tirx.Cast):
        return _eval_index(expr.value, env)
    return binary[type(expr)](_eval_index(expr.a, env), _eval_index(expr.b, env))


def store_counts(sch: s_tir.Schedule, buffer: str) -> np.ndarray:
    """How many times the one block of ``sch`` that writes ``buffer`` stores each of its elements, over
    every iteration of the loops around it (its predicate applied)."""
    stores = [r for r in _realizes(sch.mod["main"].body) if any(w.source.name == buffer for w in r.block.writes)]
    assert len(stores) == 1, f"{len(stores)} blocks write {buffer}"
    realize = stores[0]
    loops = list(sch.get_loops(sch.get_sblock(realize.block.name_hint)))
    extents = [int(sch.get(lp).extent) for lp in loops]
    grids = np.meshgrid(*[np.arange(e) for e in extents], indexing="ij")
    env = _Env()
    for lp, g in zip(loops, grids, strict=True):
        env[sch.get(lp).loop_var] = g.ravel()
    for var, value in zip(realize.block.iter_vars, realize.iter_values, strict=True):
        env[var.var] = _eval_index(value, env)
    active = _eval_index(realize.predicate, env) if not isinstance(realize.predicate, tirx.IntImm) else \
        np.full(grids[0].size, bool(realize.predicate.value))
    (write,) = [w for w in realize.block.writes if w.source.name == buffer]
    index = [np.broadcast_to(_eval_index(r.min, env), active.shape)[active] for r in write.region]
    shape = [int(d) for d in write.source.shape]
    return np.bincount(np.ravel_multi_index(index, shape), minlength=int(np.prod(shape)))


def allocated_buffers(sch: s_tir.Schedule) -> list[tirx.Buffer]:
    """Every buffer a block of the scheduled kernel allocates."""
    return [buf for r in _realizes(sch.mod["main"].body) for buf in r.block.alloc_buffers]


def add_kernel(dtype: str, shape: tuple[int, int] = (64, 64)) -> tirx.PrimFunc:
    """The TIR kernel of ``x + x``: an element-wise kernel that no GEMM or convolution rule may take."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    mod = relax.transform.LegalizeOps()(bb.get())
    (add,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    return add
