"""The CUDA target: NVIDIA GPUs, with kernels compiled to machine code (SASS) when the model is built.

TVM 0.27 exports a CUDA module as CUDA C source and compiles it when the library is loaded, so a
plain export would need a CUDA compiler wherever the model runs. Here the export hook
(``fpack_imports``) rewrites TVM's serialized module tree instead: each CUDA module's source is
compiled by nvcc into a fatbin holding SASS for the chosen architecture, and the module is stored
with format ``fatbin``, which TVM's CUDA runtime hands straight to ``cuModuleLoadData``. Running an
artifact needs the NVIDIA driver and TVM's CUDA runtime library, but no compiler.

Schedules: TVM's dlight GPU rules after legalization and fusion, as TVM's own CUDA pipeline does,
applied one kernel at a time so that a rule raising on one kernel hands it to the next rule.
Weights are parameters, as on x86: they travel beside the library, never inside it.

Before compiling (``CudaTarget.prepare``): ``--precision fp16|bf16`` rewrites the module with
``targets.mixed_precision``; then TVM's ``LiftTransformParams`` moves every computation on weights
alone (fp16/bf16 casts, transposes) out of ``main``, and the build runs it once on the CPU, so the
artifact stores the weights as the kernels read them (half the bytes in fp16/bf16) and no call
repeats it. Static-shape models run as CUDA graphs (``relax.backend.use_cuda_graph``: TVM's
``RewriteCUDAGraph`` captures the kernels between allocations on the first call and replays them).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.errors import EffarchError
from targets.base import TargetSpec

if TYPE_CHECKING:
    import tvm

    from compiler.ir.graph import Graph

logger = logging.getLogger(__name__)

# Architectures nvcc 12/13 and TVM's CUDA codegen both handle; sm_90 is the H200/H100.
ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120")
DEFAULT_ARCH = "sm_90"
ARCH_SPECIFIC = "wgmma."  # PTX that only sm_90a assembles (``targets.gemm_kernel``)
# MetaSchedule records measured on real GPUs (``effarch tune --target cuda``), applied by every -O2 CUDA build
# whose kernels they match (``effarch compile --no-bundled-tuning`` leaves them out).
BUNDLED_TUNING = Path(__file__).parent / "tuning" / "bundled"
CHANNELS_LAST_MIN_BATCH = 8  # fp16/bf16 convolutions NHWC from this batch (``CudaTarget.channels_last_for``)
FUSED_ATTENTION = True  # fp16/bf16 attention as one kernel (``targets.attention_fusion``), from sm_80
WGMMA_GEMMS = True  # fp16/bf16 GEMMs and their epilogues as wgmma kernels (``targets.gemm_fusion``), sm_90 only

DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")  # where the CUDA toolkit installs by default

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)  # header of every fatbin nvcc writes
_U64 = struct.Struct("<Q")
_BAD_IDENTIFIER = re.compile(r"\b(\d\w*_ptr)\b")
# TVM's CUDA codegen of ``if_then_else(cond, a, b)``: ``T condval; if (cond) { condval = a; } else ...``
_GUARD = re.compile(r"^(?P<indent>[ \t]*)(?P<decl>[\w:]+ condval(?:_\d+)?;)\n(?P=indent)if \((?P<cond>.*)\) \{$", re.M)
_THREAD_INDEX = re.compile(r"\(\((?:int|long long)\)(?:threadIdx|blockIdx)\.[xyz]\)")
_CONSTANT_DIVISION = re.compile(r"[/%] ?\d+\b")
_INDEX_ARITHMETIC = re.compile(r"[\w\s()+\-*<>=!&|]*")
_CALL = re.compile(r"\w\s*\(")
# Whether the CUDA build evaluates index-only guards without short-circuits (``branch_free_guards``): None,
# in builds with NHWC convolutions only (``nhwc_convolutions``). H200, 2026-12-03: ResNet-18 b32 fp16 0.796 ->
# 0.770 ms, bf16 0.839 -> 0.798, MobileNetV2 b32 fp16 0.605 -> 0.591, bf16 0.923 -> 0.921; but ResNet-18 b1
# (NCHW: nvcc unrolls its 3x3 gathers less) fp16 0.227 -> 0.234, bf16 0.228 -> 0.247.
BRANCH_FREE_GUARDS: bool | None = None
_build_state = threading.local()  # the arch of the build in progress on this thread, and its guards
_LIB_KEY = b"_lib"  # the host DSO's own slot in the import tree; it has no payload

# Same macros TVM's own nvcc helper undefines, so half/bf16 operators in the generated code compile.
_NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-U__CUDA_NO_HALF_OPERATORS__",
               "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
               "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
               "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]


# ---- compiling CUDA source to machine code ------------------------------------------------------
def find_nvcc() -> str:
    """Path of nvcc: ``$CUDA_HOME/bin``, then ``PATH``, then ``DEFAULT_NVCC``."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    found = shutil.which("nvcc")
    candidates += [Path(found)] if found else []
    candidates.append(DEFAULT_NVCC)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise EffarchError("compiling for --target cuda needs nvcc (the CUDA toolkit, 12 or newer) to make GPU "
                       "machine code; install it, or set CUDA_HOME to its folder")


def c_safe_source(source: str) -> str:
    """Rename kernel parameters TVM names after graph values that start with a digit (``0_bias_ptr``).

    TVM's CUDA codegen prints buffer parameters as ``<relax var>_ptr`` without making them C
    identifiers; a numeric literal never contains ``_ptr``, so the rename touches nothing else.
    """
    return _BAD_IDENTIFIER.sub(r"v\1", source)


def branch_free_guards(source: str) -> str:
    """``source`` with the condition of every ``if_then_else`` guard that only compares index arithmetic
    (thread and block indices, integer variables, literals, divisions by literals: no memory access, no
    call) evaluated without short-circuits: ``&&`` -> ``&``, ``||`` -> ``|`` (the same value, as every
    operand is side-effect free; TVM parenthesizes each one).

    A convolution's padded input is such a guard around each gathered load. With ``&&``, nvcc 13 branches
    around every load and each one completes before the next is issued (ResNet-18's stem: 19 branches, one
    load in flight); with ``&`` it predicates the loads and issues them together (3 branches, 4 loads in
    flight, SASS of the same kernel)."""
    def rewrite(m: re.Match[str]) -> str:
        cond = m.group("cond")
        bare = _CONSTANT_DIVISION.sub("", _THREAD_INDEX.sub("i", cond))
        if not _INDEX_ARITHMETIC.fullmatch(bare) or _CALL.search(bare):
            return m.group(0)
        cond = cond.replace("&&", "&").replace("||", "|")
        return f"{m.group('indent')}{m.group('decl')}\n{m.group('indent')}if ({cond}) {{"

    return _GUARD.sub(rewrite, source)


def compile_fatbin(source: str, arch: str, workdir: Path, guards: bool = False) -> bytes:
    """nvcc ``source`` into a fatbin with SASS for ``arch`` only (no PTX, so nothing is left to JIT); fragment
    loads marked as reading shared memory load through its state space (``wmma_intrin.use_shared_loads``);
    ``guards``: index-only guards evaluated without branches (``branch_free_guards``)."""
    from targets.schedules.wmma_intrin import use_shared_loads

    source = use_shared_loads(c_safe_source(source))
    if guards:
        source = branch_free_guards(source)
    cu, out = workdir / "kernels.cu", workdir / "kernels.fatbin"
    cu.write_text(source)
    number = arch.removeprefix("sm_")
    if number == "90" and ARCH_SPECIFIC in source:
        number = "90a"  # Hopper's warpgroup instructions exist only in the arch-specific target (runs on sm_90)
    # No --use_fast_math (TVM's helper adds it): approximate exp/div would break fp32 tolerances.
    cmd = [find_nvcc(), "--fatbin", f"-gencode=arch=compute_{number},code=sm_{number}", *_NVCC_FLAGS,
           "-o", str(out), str(cu)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        first = [ln for ln in lines if "error" in ln][:1] or lines[:1]  # not the warnings before it
        raise EffarchError(f"nvcc failed on the generated kernels for {arch} ({' '.join(first)}); "
                           f"the generated source is {cu}")
    return out.read_bytes()


# ---- TVM's serialized import tree (the blob an exported library carries) ------------------------
def _read_chunk(buf: bytes, pos: int) -> tuple[bytes, int]:
    (size,) = _U64.unpack_from(buf, pos)
    end = pos + 8 + size
    if end > len(buf):
        raise ValueError("chunk runs past the end")
    return buf[pos + 8:end], end


def _chunk(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def split_imports_blob(blob: bytes) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
    """TVM 0.27's import blob -> (tree header, [(module kind, payload)]); '_lib' has no payload.

    Layout: u64 size, CSR row pointers, child indices, then per module a kind and its SaveToBytes.
    """
    try:
        body, end = _read_chunk(blob, 0)
        if end != len(blob):
            raise ValueError("size field does not match")
        (rows,) = _U64.unpack_from(body, 0)
        pos = 8 + 8 * rows
        (children,) = _U64.unpack_from(body, pos)
        pos += 8 + 8 * children
        header, modules = body[:pos], []
        for _ in range(rows - 1):
            kind, pos = _read_chunk(body, pos)
            payload = None
            if kind != _LIB_KEY:
                payload, pos = _read_chunk(body, pos)
            modules.append((kind, payload))
        if pos != len(body):
            raise ValueError("trailing bytes")
    except (struct.error, ValueError) as exc:
        raise EffarchError(f"TVM's packed module tree has an unexpected layout ({exc}); effarch's CUDA "
                           f"export supports TVM 0.27, so install apache-tvm==0.27.*") from None
    return header, modules


def join_imports_blob(header: bytes, modules: list[tuple[bytes, bytes | None]]) -> bytes:
    parts = [header]
    for kind, payload in modules:
        parts.append(_chunk(kind))
        if payload is not None:
            parts.append(_chunk(payload))
    return _chunk(b"".join(parts))


def split_cuda_module(payload: bytes) -> tuple[str, bytes, bytes]:
    """A CUDA module's bytes -> (format, function table bytes, code). Layout: [fmt][fmap][code].

    The function table's encoding is TVM's own; it is kept verbatim, so only the code's position is
    needed: the code is the last chunk, and its length prefix is the only one consistent with that.
    """
    fmt, pos = _read_chunk(payload, 0)
    for start in range(pos, len(payload) - 7):
        (size,) = _U64.unpack_from(payload, start)
        if start + 8 + size == len(payload):
            return fmt.decode(), payload[pos:start], payload[start + 8:]
    raise EffarchError("TVM's CUDA module has an unexpected layout; effarch's CUDA export supports TVM 0.27")


def with_machine_code(blob: bytes, arch: str, workdir: Path, guards: bool = False) -> bytes:
    """The import blob with every CUDA-source module replaced by one holding an nvcc fatbin (``guards``: see
    ``compile_fatbin``)."""
    header, modules = split_imports_blob(blob)
    rewritten = []
    for kind, payload in modules:
        if kind == b"cuda" and payload is not None:
            fmt, fmap, code = split_cuda_module(payload)
            if fmt == "cuda":  # CUDA C source, as TVM's codegen leaves it
                logger.info("compiling %d kB of generated CUDA source for %s with nvcc", len(code) // 1024, arch)
                fatbin = compile_fatbin(code.decode(), arch, workdir, guards)
                payload = _chunk(b"fatbin") + fmap + _chunk(fatbin)
        rewritten.append((kind, payload))
    return join_imports_blob(header, rewritten)


def _blob_object_source(blob_path: Path, symbol: str, size: int) -> str:
    """Assembly defining ``symbol`` as the blob's bytes (.incbin: no multi-MB C array to compile)."""
    return (f'\t.section .rodata\n\t.globl {symbol}\n\t.type {symbol}, @object\n\t.balign 16\n{symbol}:\n'
            f'\t.incbin "{blob_path}"\n\t.size {symbol}, {size}\n\t.section .note.GNU-stack,"",@progbits\n')


def make_fpack_imports(arch: str, guards: bool = False) -> Any:
    """An ``export_library`` hook that packs the imports with CUDA source replaced by SASS (``guards``: see
    ``compile_fatbin``)."""

    def fpack_imports(mod: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        import tvm_ffi

        if is_system_lib or prefix:
            raise EffarchError("the CUDA target does not build system libraries; drop the system-lib option")
        blob = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        workdir = Path(workspace_dir)
        blob_path = workdir / "imports.bin"
        blob_path.write_bytes(with_machine_code(blob, arch, workdir, guards))
        symbol = str(tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")())
        asm = workdir / "devc.S"
        asm.write_text(_blob_object_source(blob_path.resolve(), symbol, blob_path.stat().st_size))
        return str(asm)

    return fpack_imports


def fatbins_in(library: bytes) -> list[bytes]:
    """Every fatbin embedded in a built library (header: magic, version, header size, body size)."""
    found, pos = [], library.find(FATBIN_MAGIC)
    while pos >= 0:
        header_size = struct.unpack_from("<H", library, pos + 6)[0]
        (body_size,) = _U64.unpack_from(library, pos + 8)
        found.append(library[pos:pos + header_size + body_size])
        pos = library.find(FATBIN_MAGIC, pos + header_size + body_size)
    return found


_ARCH_SPECIFIC_FLAG = 0x100000  # set in an entry's flags for sm_90a-style targets (nvcc 13, compared on one kernel)


def fatbin_entries(fatbin: bytes) -> list[tuple[str, str]]:
    """(kind, arch) per fatbin entry: ('sass', 'sm_90') for machine code, ('ptx', ...) for PTX; 'sm_90a' for
    code of the arch-specific target (a flag bit of the entry header, as nvcc 13 writes it)."""
    header_size = struct.unpack_from("<H", fatbin, 6)[0]
    entries, pos = [], header_size
    while pos + 32 <= len(fatbin):
        kind, _, entry_header = struct.unpack_from("<HHI", fatbin, pos)
        (size,) = _U64.unpack_from(fatbin, pos + 8)
        arch = struct.unpack_from("<I", fatbin, pos + 28)[0]
        flags = _U64.unpack_from(fatbin, pos + 40)[0] if entry_header >= 48 else 0
        suffix = "a" if flags & _ARCH_SPECIFIC_FLAG else ""
        entries.append(({1: "ptx", 2: "sass"}.get(kind, f"kind{kind}"), f"sm_{arch}{suffix}"))
        pos += entry_header + size
    return entries


def machine_code_report(library: bytes) -> dict[str, Any]:
    """What GPU code a built library holds: fatbin entries, and CUDA C kernels left as source (0)."""
    entries = [e for fb in fatbins_in(library) for e in fatbin_entries(fb)]
    return {"fatbin_entries": entries, "cuda_source_kernels": library.count(b'extern "C" __global__')}


def find_cuobjdump() -> Path:
    """cuobjdump: next to nvcc, on ``PATH``, or from the ``nvidia-cuda-cuobjdump`` wheel (dev extra)."""
    import importlib.util

    try:
        places = [Path(find_nvcc()).parent]
    except EffarchError:
        places = []
    found = shutil.which("cuobjdump")
    places += [Path(found).parent] if found else []
    spec = importlib.util.find_spec("nvidia")
    places += [Path(p) / "cu13" / "bin" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in places:
        if (folder / "cuobjdump").is_file() and (folder / "nvdisasm").is_file():
            return folder / "cuobjdump"
    raise EffarchError("reading SASS needs cuobjdump and nvdisasm (CUDA toolkit, or pip install "
                       "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def sass_opcodes(library: bytes) -> dict[str, int]:
    """How often each SASS opcode (``HMMA``, ``HGMMA``, ``IMMA``, ``FFMA``...) occurs in a built
    library's fatbins, from ``cuobjdump -sass``."""
    import collections
    import tempfile

    tool = find_cuobjdump()
    env = {**os.environ, "PATH": f"{tool.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    counts: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="effarch-sass-") as tmp:
        for i, fatbin in enumerate(fatbins_in(library)):
            path = Path(tmp) / f"{i}.fatbin"
            path.write_bytes(fatbin)
            proc = subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, env=env,
                                  check=False)
            if proc.returncode != 0:
                raise EffarchError(f"cuobjdump failed: {(proc.stderr or proc.stdout).strip()[:200]}")
            counts.update(m.group(1) for m in map(_SASS_LINE.search, proc.stdout.splitlines()) if m)
    return dict(counts)


# ---- running ------------------------------------------------------------------------------------
def _load_cuda_driver() -> None:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise EffarchError("this artifact runs on an NVIDIA GPU but this machine has no NVIDIA driver "
                           "(libcuda.so.1 not found); run it on a machine with an NVIDIA GPU, or compile "
                           "with --target x86") from None


def _preload_cudart() -> bool:
    """TVM's CUDA runtime links libcudart.so.13; toolkits often keep it off the loader's path."""
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for path in [Path(r) / d / "libcudart.so.13" for r in roots if r for d in ("lib64", "lib")]:
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return True
    return False


def _load_tvm_cuda_runtime() -> None:
    """TVM's CUDA runtime library registers the CUDA device and module loader; load it if needed."""
    import tvm
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        if "libcudart" not in str(exc) or not _preload_cudart():
            raise EffarchError(f"cannot load TVM's CUDA runtime ({exc}); install the CUDA 13 runtime "
                               f"(libcudart.so.13) and apache-tvm with CUDA support") from None
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def _compute_capability(device: Any) -> tuple[int, int]:
    major, minor = str(device.compute_version).split(".")
    return int(major), int(minor)


def check_gpu_runs(arch: str, capability: tuple[int, int]) -> None:
    """SASS for sm_XY runs on GPUs of the same major version X with minor version >= Y."""
    number = arch.removeprefix("sm_")
    want = (int(number[:-1]), int(number[-1]))
    if capability[0] != want[0] or capability[1] < want[1]:
        have = f"sm_{capability[0]}{capability[1]}"
        raise EffarchError(f"this artifact holds GPU code for {arch} but this GPU is {have}; "
                           f"rebuild it with --arch {have}")


class CudaTarget(TargetSpec):
    name = "cuda"
    description = "NVIDIA GPUs through TVM's CUDA codegen and dlight schedules; SASS built with nvcc"
    arch = "x86_64"  # the host side of the library: it launches the kernels

    def known_cpus(self) -> list[str]:
        return list(ARCHS)

    def default_cpu(self) -> str:
        return DEFAULT_ARCH

    def resolve_cpu(self, cpu: str | None) -> str:
        """The GPU architecture (the CLI's ``--arch``; ``cpu`` for the TargetSpec interface)."""
        if cpu is not None and cpu not in ARCHS:
            raise EffarchError(f"unknown CUDA architecture '{cpu}'; pass --arch one of: {', '.join(ARCHS)}")
        return cpu or DEFAULT_ARCH

    def target_dict(self, cpu: str) -> dict[str, Any]:
        # A generic x86-64 host: the host code only launches kernels, so it should run on any x86-64.
        return {"kind": "cuda", "arch": cpu, "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}

    def int8_isa(self, cpu: str | None) -> str:
        """Integer contractions with constant weights go to ``lowering.quantized_cuda`` (dp4a)."""
        from targets.lowering.quantized_cuda import CUDA_INT8

        return CUDA_INT8

    precisions = ("fp32", "fp16", "bf16")
    graph_capture = True
    tunable = True  # ``effarch tune --target cuda`` on a machine with the GPU; records ship in BUNDLED_TUNING

    def prepare(self, mod: tvm.IRModule, param_names: list[str], params: list[np.ndarray], *,
                precision: str = "fp32") -> tuple[tvm.IRModule, list[str], list[np.ndarray]]:
        if precision != "fp32":
            from targets.mixed_precision import to_mixed_precision

            mod = to_mixed_precision(mod, precision)
        # ``export`` is not given the module: remember whether its kernels take branch-free guards
        _build_state.guards = nhwc_convolutions(mod) if BRANCH_FREE_GUARDS is None else BRANCH_FREE_GUARDS
        return lift_weight_transforms(mod, param_names, params)

    def channels_last_for(self, g: Graph, precision: str) -> bool:
        """fp16/bf16 convolutional networks at batch >= ``CHANNELS_LAST_MIN_BATCH`` whose grouped convolutions,
        if any, are all depthwise: NHWC with HWIO weights lets the tensor-core kernels load both operands in
        16-byte vectors along the reduction (NCHW's implicit im2col gathers the input one element at a time).
        On the H200 (2026-12-02) ResNet-18 fp16 at batch 32 took 0.944 ms NHWC against 5.18 ms NCHW, but at
        batch 1 0.285 against 0.252 ms. Depthwise convolutions have an NHWC rule of their own
        (``gpu_depthwise_nhwc``); other grouped ones would fall to dlight's generic schedules, so such a
        graph stays NCHW. MobileNetV2 at batch 32 (2026-12-02, H200): fp16 2.754 ms NCHW -> 0.674 ms NHWC,
        bf16 2.318 -> 1.280 ms."""
        if precision == "fp32":
            return False
        convs = [n for n in _nodes(g) if n.op == "Conv"]
        if not convs or not all(_dense_or_depthwise(n) for n in convs):
            return False
        types = [n.inputs[0].type for n in convs if n.inputs[0] is not None]
        batches = [t.shape[0] for t in types if t is not None and t.shape is not None and len(t.shape) == 4]
        return bool(batches) and all(isinstance(b, int) and b >= CHANNELS_LAST_MIN_BATCH for b in batches)

    def pass_config(self, *, cuda_graphs: bool) -> dict[str, Any]:
        return pass_config(cuda_graphs)

    def relax_pipeline(self, tvm_target: tvm.target.Target, *, opt_level: int = 2,
                       report: Any = None, tuned: Any = None) -> tvm.transform.Pass:
        # ``export`` is not given the target, and the build calls this just before it: remember the arch.
        _build_state.arch = str(tvm_target.attrs["arch"])
        return cuda_pipeline(tvm_target, report, tuned=tuned)

    def kernels_pipeline(self, tvm_target: tvm.target.Target) -> tvm.transform.Pass:
        """The build's pipeline up to its schedules: the kernels ``effarch tune`` tunes."""
        return cuda_pipeline(tvm_target, schedule=False)

    def bundled_tuning(self, cpu: str) -> Path | None:
        """The tuning database shipped with effarch, where it holds records for ``cpu`` (an arch)."""
        return BUNDLED_TUNING if (BUNDLED_TUNING / f"{self.name}-{cpu}").is_dir() else None

    def export(self, executable: Any, path: Path) -> Path:
        find_nvcc()  # fail before the export starts, with the install hint
        arch = getattr(_build_state, "arch", DEFAULT_ARCH)
        guards = getattr(_build_state, "guards", False)
        executable.export_library(str(path), fpack_imports=make_fpack_imports(arch, guards))
        return path

    def device(self) -> tvm.runtime.Device:
        import tvm

        _load_tvm_cuda_runtime()
        return tvm.cuda(0)

    def check_host(self, manifest: dict[str, Any]) -> None:
        super().check_host(manifest)
        _load_cuda_driver()
        device = self.device()
        if not device.exist:
            raise EffarchError("the NVIDIA driver is installed but it sees no GPU; run this artifact on a "
                               "machine with an NVIDIA GPU (check nvidia-smi)")
        check_gpu_runs(manifest["target"].get("cpu", DEFAULT_ARCH), _compute_capability(device))


def nhwc_convolutions(mod: tvm.IRModule) -> bool:
    """Whether ``main`` convolves NHWC (a channels-last build, ``channels_last_for``)."""
    import tvm
    from tvm import relax

    found: list[bool] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.nn.conv2d":
            found.append(str(e.attrs.data_layout) == "NHWC")

    if "main" in [gv.name_hint for gv in mod.get_global_vars()]:
        relax.analysis.post_order_visit(mod["main"].body, visit)
    return any(found)


def _dense_or_depthwise(conv: Any) -> bool:
    """A convolution with one group, or one group per channel, as many out channels as in (MobileNet's)."""
    group = int(conv.attr("group", 1))
    if group == 1:
        return True
    x, w = conv.inputs[0], conv.inputs[1]
    shapes = [v.type.shape if v is not None and v.type is not None else None for v in (x, w)]
    if any(s is None or len(s) != 4 for s in shapes):
        return False
    return shapes[0][1] == shapes[1][0] == group and shapes[1][1] == 1  # type: ignore[index]


def _nodes(g: Graph) -> list[Any]:
    """``g``'s nodes with those inside fused groups' bodies (which the lowering lowers one by one)."""
    out: list[Any] = []
    for n in g.nodes:
        out += _nodes(n.body) if n.body is not None else [n]
    return out


# ---- weights: transformed once, at build time ---------------------------------------------------
TRANSFORM_FUNC = "main_transform_params"


def lift_weight_transforms(mod: tvm.IRModule, names: list[str], params: list[np.ndarray]
                           ) -> tuple[tvm.IRModule, list[str], list[np.ndarray]]:
    """``main`` taking its weights as its kernels read them: TVM's ``LiftTransformParams`` splits the
    computations on weights alone off ``main`` (``main`` must have attr ``num_input``); they run here,
    on the CPU, once. Returns the module without them, the new weights' names (a transformed weight
    keeps its source's name) and arrays."""
    import tvm
    from tvm import relax

    if not params:
        return mod, names, params
    lifted = relax.transform.LiftTransformParams()(mod)
    if TRANSFORM_FUNC not in [gv.name_hint for gv in lifted.get_global_vars()]:
        return mod, names, params
    transform = lifted[TRANSFORM_FUNC]
    if not _computes(transform):
        return mod, names, params  # only passes weights through: nothing to do once
    cpu_mod = tvm.IRModule({"transform": transform.with_attr("global_symbol", "transform")})
    host = tvm.target.Target({"kind": "llvm"})
    exe = tvm.compile(cpu_mod, target=host, relax_pipeline=relax.get_default_pipeline(host))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    outputs = vm["transform"]([tvm.runtime.tensor(p, tvm.cpu()) for p in params])
    new_params = [np.asarray(t.numpy()) for t in outputs]
    del lifted[TRANSFORM_FUNC]
    new_names = _transformed_names(transform, names, len(new_params))
    logger.info("weights transformed once at build: %d in (%.1f MB), %d out (%.1f MB)", len(params),
                sum(p.nbytes for p in params) / 1e6, len(new_params), sum(p.nbytes for p in new_params) / 1e6)
    return lifted, new_names, new_params


def _computes(func: Any) -> bool:
    from tvm import relax

    calls: list[Any] = []
    relax.analysis.post_order_visit(func.body, lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    return bool(calls)


def _transformed_names(transform: Any, names: list[str], count: int) -> list[str]:
    """Each output of the transform named after the one weight it derives from (``name``, then
    ``name.1`` ... where one weight gives several), else ``weight.<i>``."""
    from tvm import relax

    bound: dict[Any, Any] = {}
    for block in transform.body.blocks:
        for binding in block.bindings:
            bound[binding.var] = binding.value
    source = transform.params[0]
    result = transform.body.body
    fields = bound.get(result, result)
    fields = list(fields.fields) if isinstance(fields, relax.Tuple) else []

    def sources(expr: Any) -> set[int]:
        found: set[int] = set()
        todo = [expr]
        while todo:
            e = todo.pop()
            if isinstance(e, relax.TupleGetItem) and e.tuple_value.same_as(source):
                found.add(int(e.index))
                continue
            if isinstance(e, relax.Var) and e in bound:
                todo.append(bound[e])
            elif isinstance(e, relax.Call):
                todo.extend(e.args)
            elif isinstance(e, relax.Tuple):
                todo.extend(e.fields)
        return found

    out: list[str] = []
    seen: dict[str, int] = {}
    for i in range(count):
        src = sources(fields[i]) if i < len(fields) else set()
        base = names[src.pop()] if len(src) == 1 else f"weight.{i}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}.{n}")
    return out


def pass_config(cuda_graphs: bool) -> dict[str, Any]:
    """The PassContext of a CUDA build. ``tirx.use_async_copy``: the shared-memory copies a schedule puts in a
    software pipeline's async stage become ``cp.async`` (without it TVM 0.27 emits the pipeline's
    commit/wait but plain loads, so the copies never overlap the products)."""
    return {"relax.backend.use_cuda_graph": cuda_graphs, "tirx.use_async_copy": True}


def gpu_rules() -> list[tuple[str, Any]]:
    """The GPU schedule rules in the order they are offered each kernel."""
    from tvm.s_tir import dlight as dl

    from targets.schedules.gpu_depthwise import GpuDepthwise
    from targets.schedules.gpu_depthwise_nhwc import GpuDepthwiseNhwc
    from targets.schedules.gpu_fold import GpuFold
    from targets.schedules.gpu_int8 import GpuInt8
    from targets.schedules.gpu_pool_nhwc import GpuPoolNhwc
    from targets.schedules.gpu_rows import GpuRows
    from targets.schedules.gpu_simt import SimtMatmul
    from targets.schedules.gpu_small_m import SmallMMatmul
    from targets.schedules.gpu_tensorcore import TensorCoreMatmul

    # fp16/bf16 GEMMs and convolutions (``--precision``) go to tensor cores first; fp32 ones to CUDA cores,
    # tiled by shape (``simt-matmul``), or with fewer than 16 rows across the threads of K (``small-m``); what
    # none takes (a GEMV, a symbolic shape) to dlight.
    return [("tensorcore", TensorCoreMatmul(split_k=True, max_warps=4, vector_store=True, shared_loads=True)),
            ("depthwise", GpuDepthwise()),
            ("depthwise-nhwc", GpuDepthwiseNhwc()), ("pool-nhwc", GpuPoolNhwc()), ("fold-nhwc", GpuFold()),
            ("int8-dp4a", GpuInt8()),
            ("simt-matmul", SimtMatmul()), ("small-m", SmallMMatmul()),
            ("dlight-matmul", dl.gpu.Matmul()), ("dlight-gemv", dl.gpu.GEMV()),
            ("dlight-low-batch-gemv", dl.gpu.LowBatchGEMV()), ("gpu-rows", GpuRows()),
            ("dlight-reduction", dl.gpu.Reduction()),
            ("dlight-general-reduction", dl.gpu.GeneralReduction()), ("dlight-transpose", dl.gpu.Transpose()),
            ("dlight-fallback", dl.gpu.Fallback())]


def tuning_target(tvm_target: tvm.target.Target) -> tvm.target.Target:
    """``tvm_target`` with the per-block limits MetaSchedule's GPU rules and its ``VerifyGPUCode`` read
    (TVM fills them in only from a device it sees at target creation): 48 KiB of static shared memory,
    1024 threads and 64 Ki registers per block hold from sm_50 to sm_120."""
    from tvm.target import Target

    cfg = {**json.loads(str(tvm_target)), "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
           "registers_per_block": 65536}
    return Target(cfg)


def cuda_pipeline(tvm_target: tvm.target.Target, report: Any = None, *, tuned: Any = None,
                  schedule: bool = True) -> tvm.transform.Pass:
    """TVM's CUDA pipeline, spelled out: legalize, fuse, then schedules: effarch's dp4a rule for the int8
    GEMMs of ``lowering.quantized_cuda``, dlight's rules for every other TIR function, one kernel at a
    time (``schedules.gpu_rules``: a rule that raises on a kernel hands it to the next). Between fusion
    and ``FuseTIR``, ``cast_fusion`` moves each cast left as a kernel of its own into its producer or readers.
    ``tuned`` (``targets.tuning.TunedSchedules``) schedules a kernel by its tuned record where that measured
    faster than the rules; ``schedule=False`` stops after fusion, with every kernel unscheduled."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda

    from targets.attention_fusion import fuse_attention
    from targets.cast_fusion import fuse_casts
    from targets.gemm_fusion import fuse_gemms
    from targets.schedules.gpu_rules import apply_rules
    from targets.schedules.gpu_tensorcore import sm_version

    schedules = [apply_rules(gpu_rules(), report, tuned)] if schedule else []
    attention = [fuse_attention()] if FUSED_ATTENTION and sm_version(tvm_target) >= 80 else []
    gemms = [fuse_gemms()] if WGMMA_GEMMS and sm_version(tvm_target) == 90 else []
    legalize = [*attention, *gemms, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), fuse_casts(), relax.transform.FuseTIR(),
                *schedules]

    @tvm.transform.module_pass(opt_level=0, name="effarch.cuda_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tvm_target:
            passes = cuda.library_dispatch_passes(tvm_target) + legalize
            if schedule:
                passes += cuda.dataflow_lower_passes(tvm_target) + cuda.finalize_passes(tvm_target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


TARGET = CudaTarget()
