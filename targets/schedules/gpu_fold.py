"""The space-to-depth fold of a network's input on NVIDIA GPUs (``lowering.space_to_depth``): a thread stores a
16-byte vector of one folded pixel.

The fold reads the NCHW float32 image and writes ``[n, rows, cols, 16]`` in fp16/bf16 (4 positions of a 2x2
patch times 4 channels, the fourth zero). dlight's ``Fallback`` gives each output element a thread: a warp covers
two folded pixels, so its loads hit 6 rows of 3 channel planes, 4 bytes from each place, and its stores are 2 bytes
each. On the H200 (2026-12-03, ResNet-18 fp16 at batch 32) that kernel took 32.0 us, half of what folding saved the
stem. Here a thread owns ``16 / dtype bytes`` consecutive folded channels of one pixel (one row of the patch: both
columns of every channel), computes them (the cast the build moved into the kernel included) and stores them as
one vector; consecutive threads take the next patch row, then the next pixel, so a warp's loads of one row of
one plane fall in 128 contiguous bytes.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from targets.schedules.gpu_tensorcore import tirx_dtype_bytes

logger = logging.getLogger(__name__)

FOLD_BLOCK = "space_to_depth_fold"  # the name of the fold's block (``lowering.space_to_depth.fold_input``)
VECTOR_BYTES = 16
THREADS = 128


class GpuFold(ScheduleRule):
    """A kernel holding a block named ``FOLD_BLOCK`` (and element-wise blocks around it): a 16-byte vector per
    thread."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        at = [i for i, b in enumerate(blocks) if sch.get(b).name_hint == FOLD_BLOCK]
        if len(at) != 1:
            return None
        fold = blocks[at[0]]
        try:
            for block in blocks[:at[0]]:  # a cast of the input into the fold's loads
                sch.compute_inline(block)
            for block in reversed(blocks[at[0] + 1:]):  # the cast (and any element-wise step) into its store
                sch.reverse_compute_inline(block)
        except s_tir.ScheduleError as exc:
            logger.info("fold declined (%s)", (str(exc).strip().splitlines() or ["?"])[-1])
            return None
        stmt = sch.get(fold)
        loops = sch.get_loops(fold)
        channels = stmt.iter_vars[-1].dom.extent
        lanes = VECTOR_BYTES // tirx_dtype_bytes(str(stmt.writes[0].source.dtype))
        if len(loops) != 4 or not isinstance(channels, tirx.IntImm) or int(channels) % lanes:
            return None
        c, lane = sch.split(loops[3], [None, lanes])
        bx, tx = sch.split(sch.fuse(*loops[:3], c), [None, THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.unroll(lane)  # each lane's value in a register (its padding test differs by lane) ...
        store = sch.cache_write(fold, 0, "local")
        sch.reverse_compute_at(store, tx)
        sch.vectorize(sch.get_loops(store)[-1])  # ... then one vector store
        return sch
