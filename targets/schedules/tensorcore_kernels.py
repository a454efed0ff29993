"""Single-op GEMM kernels built and run outside a model: the tensor-core rule's tests and
``tools/gpu_tensorcore_check.py`` (which may not import TVM itself) use these.

``gemm_kernel`` makes the fused PrimFunc of one Relax matmul / batched matmul / NCHW conv2d as
effarch's CUDA build sees it (legalized, fused); ``schedule_with`` schedules it with effarch's
``TensorCoreMatmul`` or with dlight's ``Matmul``; ``build_library`` compiles kernels into one library
holding SASS only; ``targets.kernel_library`` runs it where only TVM's runtime is installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, tirx

from targets.kernel_library import conv_dims, forced_tiles, operand_shapes
from targets.schedules.gpu_rules import fused_kernel


def gemm_kernel(kind: str, dims: tuple[int, ...], dtype: str, acc: str | None = None) -> tirx.PrimFunc:
    """The fused PrimFunc of one op in ``dtype`` accumulating in ``acc`` (None: ``dtype``), its
    result cast back to ``dtype``."""
    xs, ws = operand_shapes(kind, dims)
    bb = relax.BlockBuilder()
    x, w = relax.Var("x", relax.TensorType(xs, dtype)), relax.Var("w", relax.TensorType(ws, dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            if kind == "conv":
                _, _, _, r, stride = conv_dims(dims)
                y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=r // 2, out_dtype=acc or dtype))
            else:
                y = bb.emit(relax.op.matmul(x, w, out_dtype=acc or dtype))
            if acc and acc != dtype:
                y = bb.emit(relax.op.astype(y, dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return fused_kernel(bb.get())


def cuda_target(arch: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


def schedule_with(func: tirx.PrimFunc, schedule: str, arch: str) -> tuple[tirx.PrimFunc, str]:
    """``func`` scheduled by effarch's tensor-core rule or by dlight's Matmul ('dlight', its Fallback if
    Matmul declines); and what scheduled it. Raises if the rule declines.

    Tensor cores: 'effarch' (never pipelined, no split), 'effarch-splitk' (split reductions),
    'effarch-pipelined' (the next K step's copies overlapped); 'effarch-Nwarps' split with at most N warps
    per block, pipelined where ``pipeline_stages`` says ('effarch-4warps-vec-ldsm' is the build's rule), with
    '-pipelined' / '-pipeS' always (S stages), '-pipe1' never, '-vec' writing back 4-element vectors,
    '-ldsm' loading fragments with ``wmma.load`` from the shared state space (ldmatrix), '-tBMxBNxBKwWMxWNsS'
    in those tiles (``Tiles(BM, BN, BK, WM, WN, S)``) instead of the rule's choice.
    'effarch-simt': float32 on CUDA cores ('-4x4' outputs a thread, '-pipe' / '-pipeS' pipelined);
    'effarch-small': float32 with a few rows (``_small_m``)."""
    from tvm.s_tir import dlight as dl

    from targets.schedules.gpu_tensorcore import TensorCoreMatmul, Tiles, plan_gemm

    target = cuda_target(arch)
    pipe = re.search(r"-pipe(\d?)", schedule)
    stages = int(pipe.group(1) or 2) if pipe else None
    if schedule.startswith("effarch-small"):
        return _small_m(func, schedule, target)
    if schedule.startswith("effarch-simt"):
        from targets.schedules.gpu_simt import MICRO, TALL, SimtMatmul, plan_simt

        tall = MICRO if "4x4" in schedule else TALL
        sch = SimtMatmul(tall, pipeline=stages or 1).apply(func, target, False)
        if sch is None:
            raise ValueError(f"schedule {schedule!r} declined this kernel")
        shape, tiles = plan_simt(func, tall) or ((), None)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True), f"simt {shape}: {tiles}"
    split = schedule in ("effarch-splitk",) or "warps" in schedule
    ours = schedule.startswith("effarch")
    warps = int(m.group(1)) if (m := re.search(r"(\d+)warps", schedule)) else 16
    if schedule in ("effarch", "effarch-splitk"):
        stages = stages or 1  # as built before the pipeline rule: never pipelined
    _, numbers = forced_tiles(schedule)
    forced = Tiles(*numbers) if numbers else None
    rules: list[Any] = ([TensorCoreMatmul(split_k=split, pipeline=stages, max_warps=warps,
                                          vector_store="-vec" in schedule, shared_loads="-ldsm" in schedule,
                                          tiles=forced)]
                        if ours
                        else [dl.gpu.Matmul(), dl.gpu.Fallback()])
    for rule in rules:
        sch = rule.apply(func, target, False)
        if sch is not None:
            how = str(plan_gemm(func, split, warps, forced)) if ours else type(rule).__name__
            return sch.mod["main"].with_attr("tirx.is_scheduled", True), how
    raise ValueError(f"schedule {schedule!r} took no rule for this kernel")


def _small_m(func: tirx.PrimFunc, schedule: str, target: tvm.target.Target) -> tuple[tirx.PrimFunc, str]:
    """'effarch-small': float32 GEMMs of a few rows (``gpu_small_m``), '-nNkK' with N threads across the
    columns and K along the reduction (``sS``: K split in S parts; unsplit without) instead of the rule's choice."""
    from targets.schedules.gpu_small_m import SmallMMatmul, SmallMTiles, plan_small_m

    forced = re.search(r"-n(\d+)k(\d+)(?:s(\d+))?$", schedule)
    tiles = SmallMTiles(int(forced.group(1)), int(forced.group(2)), int(forced.group(3) or 1)) if forced else None
    sch = SmallMMatmul(tiles).apply(func, target, False)
    planned = plan_small_m(func)
    if sch is None or planned is None:
        raise ValueError(f"schedule {schedule!r} declined this kernel")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), f"small-m {planned[0]}: {tiles or planned[1]}"


def build_library(funcs: dict[str, tirx.PrimFunc], arch: str, path: Path, guards: bool = False) -> None:
    """Scheduled kernels, each under its name, into one shared library holding SASS for ``arch``
    (``guards``: see ``targets.cuda.compile_fatbin``)."""
    from targets.cuda import make_fpack_imports, pass_config

    target = cuda_target(arch)
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    with target, tvm.transform.PassContext(config=pass_config(cuda_graphs=False)):
        lib = tvm.compile(mod, target=target)
    lib.export_library(str(path), fpack_imports=make_fpack_imports(arch, guards))
