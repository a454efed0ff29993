"""Run an artifact on a remote device that speaks TVM RPC: a board, or the emulated Arm device.

    rpc://HOST:PORT            a TVM RPC server (``python -m tvm.exec.rpc_server``, ``tvm_rpc``)
    tracker://HOST:PORT/KEY    a TVM RPC tracker; any free server registered under KEY

Before running, effarch asks the device what it is: it uploads a tiny probe library, built for the
artifact's architecture, that returns the kernel's ``AT_HWCAP`` words. A device that cannot load
it has the wrong architecture; one whose hwcaps lack a feature the artifact uses is refused. Both
errors come before the model's code runs, so a wrong device gives a message instead of SIGILL.
Every network step has a deadline, so a device that does not answer is an error, never a hang.

A real board (e.g. a Raspberry Pi 4, Cortex-A72) needs only TVM's runtime and its RPC server:
    pip install apache-tvm==<host version> cloudpickle psutil tornado
    TVM_USE_RUNTIME_LIB=1 python3 -m tvm.exec.rpc_server --host 0.0.0.0 --port 9190
    # or, with a tracker on HOST:9190:  ... --tracker HOST:9190 --key rasp4
then, here: ``effarch run m.effarch --device rpc://BOARD:9190`` (or ``tracker://HOST:9190/rasp4``).
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from compiler.errors import EffarchError
from targets.artifact import Artifact, TensorSpec, open_artifact
from targets.runtime import check_inputs, default_cache_dir

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SESSION_TIMEOUT_S = 900.0  # emulated devices are 10-25x slower than real cores
_HINT = "is the RPC server running there? (the emulated one: python tools/arm_device.py start)"


@dataclass(frozen=True)
class DeviceAddress:
    """A parsed ``--device`` URL; ``key`` is set for trackers only."""

    scheme: str  # "rpc" or "tracker"
    host: str
    port: int
    key: str = ""

    def __str__(self) -> str:
        tail = f"/{self.key}" if self.scheme == "tracker" else ""
        return f"{self.scheme}://{self.host}:{self.port}{tail}"


def parse_device(url: str) -> DeviceAddress:
    """``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY`` -> DeviceAddress; anything else is an error."""
    scheme, sep, rest = url.partition("://")
    hostport, _, key = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    usage = "write rpc://HOST:PORT or tracker://HOST:PORT/KEY"
    if not sep or scheme not in ("rpc", "tracker") or not host or not port.isdigit():
        raise EffarchError(f"bad device '{url}'; {usage}")
    if (scheme == "tracker") != bool(key) or "/" in key:
        raise EffarchError(f"bad device '{url}': a tracker needs a device KEY, an rpc server takes none; {usage}")
    if not 0 < int(port) < 65536:
        raise EffarchError(f"bad device '{url}': port {port} is out of range; {usage}")
    return DeviceAddress(scheme, host.strip("[]"), int(port), key)


# ---- connecting -------------------------------------------------------------------------------
def _with_deadline(fn: Callable[[], T], timeout_s: float, on_timeout: str) -> T:
    """``fn()`` in a daemon thread; an EffarchError if it has not returned after ``timeout_s``.

    TVM's connect and tracker calls block in C++ or retry for a minute with no way to cancel them;
    a thread we can abandon is the only deadline that holds for every step."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="effarch-rpc", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EffarchError(on_timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]  # set by target() when no error


def _check_reachable(addr: DeviceAddress, timeout_s: float) -> None:
    what = "tracker" if addr.scheme == "tracker" else "RPC device"
    try:
        socket.create_connection((addr.host, addr.port), timeout=timeout_s).close()
    except TimeoutError:
        raise EffarchError(f"{what} at {addr} did not answer within {timeout_s:g} s; {_HINT}") from None
    except OSError as exc:
        raise EffarchError(f"{what} at {addr} is not reachable ({exc.strerror or exc}); {_HINT}") from None


def connect(addr: DeviceAddress, timeout_s: float = DEFAULT_TIMEOUT_S,
            session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S) -> Any:
    """An RPC session with the device (``tvm.rpc.RPCSession``); every step is bounded by ``timeout_s``."""
    from tvm import rpc

    _check_reachable(addr, timeout_s)
    if addr.scheme == "rpc":
        return _with_deadline(lambda: rpc.connect(addr.host, addr.port, session_timeout=session_timeout_s),
                              timeout_s, f"RPC device at {addr} accepted the connection but did not "
                                         f"complete the handshake within {timeout_s:g} s; {_HINT}")
    tracker = _with_deadline(lambda: rpc.connect_tracker(addr.host, addr.port), timeout_s,
                             f"tracker at {addr} did not answer within {timeout_s:g} s")
    _check_key_known(addr, tracker.summary())
    return _with_deadline(lambda: tracker.request(addr.key, session_timeout=session_timeout_s), timeout_s,
                          f"no device under key '{addr.key}' at tracker {addr} became free within "
                          f"{timeout_s:g} s; all are busy")


def _check_key_known(addr: DeviceAddress, summary: dict[str, Any]) -> None:
    keys = sorted(summary.get("queue_info", {}))
    if addr.key not in keys:
        have = ", ".join(keys) or "none"
        raise EffarchError(f"tracker {addr.host}:{addr.port} has no device under key '{addr.key}' "
                           f"(keys there: {have}); start one with tools/arm_device.py start "
                           f"--tracker {addr.host}:{addr.port} --key {addr.key}")


_PR_SVE_GET_VL = 51  # linux/prctl.h

# ---- asking the device what it is -------------------------------------------------------------
@dataclass(frozen=True)
class DeviceCpu:
    arch: str
    hwcaps: frozenset[str]
    sve_bits: int = 0  # the SVE vector length the kernel gives a process (0: no SVE)


def _probe_library(arch: str) -> Path:
    """A library exporting ``effarch_probe(out: i64[3])`` = the kernel's AT_HWCAP, AT_HWCAP2 and
    ``prctl(PR_SVE_GET_VL)`` (aarch64; negative where there is no SVE); cached."""
    path = default_cache_dir() / "probe" / f"hwcap-sve-{arch}.so"
    if path.is_file():
        return path
    import tvm
    from tvm.script import tirx as S

    @S.prim_func
    def probe(out: S.Buffer((3,), "int64")) -> None:  # type: ignore[valid-type]  # TVMScript, not typing
        S.func_attr({"global_symbol": "effarch_probe"})
        out[0] = S.call_extern("int64", "getauxval", S.int64(16))  # AT_HWCAP
        out[1] = S.call_extern("int64", "getauxval", S.int64(26))  # AT_HWCAP2
        out[2] = S.Cast("int64", S.call_extern("int32", "prctl", S.int32(_PR_SVE_GET_VL), S.int64(0), S.int64(0),
                                               S.int64(0), S.int64(0)))

    from targets.arm import TRIPLE, cross_compiler

    aarch64 = arch == "aarch64"
    target = {"kind": "llvm", "mtriple": TRIPLE} if aarch64 else {"kind": "llvm"}
    lib = tvm.compile(tvm.IRModule({"effarch_probe": probe}), target=tvm.target.Target(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp.so")
    lib.export_library(str(tmp), fcompile=cross_compiler() if aarch64 else None)
    tmp.replace(path)
    return path


def device_cpu(session: Any, arch: str, addr: DeviceAddress) -> DeviceCpu:
    """What the device's kernel reports; an EffarchError if it cannot run ``arch`` code at all."""
    import tvm

    probe = _probe_library(arch)
    session.upload(str(probe), target=probe.name)
    try:
        module = session.load_module(probe.name)
    except tvm.error.RPCError as exc:
        # dlopen's own message for a foreign ELF is "No such file or directory": not worth showing.
        logger.debug("probe load failed: %s", exc)
        raise EffarchError(f"the device at {addr} cannot load {arch} code, so it is not an {arch} machine; "
                           f"build the artifact for that device's target (--target/--cpu)") from None
    words = tvm.runtime.tensor(np.zeros(3, "int64"), session.cpu())
    module["effarch_probe"](words)
    hwcap, hwcap2, vl = (int(w) for w in words.numpy())
    from targets.arm import hwcap_names, sve_bits_of

    if arch != "aarch64":
        return DeviceCpu(arch, frozenset())
    return DeviceCpu(arch, frozenset(hwcap_names(hwcap, hwcap2)), sve_bits_of(vl))


def check_device(manifest: dict[str, Any], cpu: DeviceCpu, addr: DeviceAddress) -> None:
    """Refuse a device that lacks an instruction-set feature the artifact was built to use."""
    if cpu.arch != "aarch64":
        return  # only aarch64 kernels report ISA features in AT_HWCAP
    from targets.arm import check_sve_length, missing_features

    target = manifest["target"]
    missing = missing_features(target.get("features", []), set(cpu.hwcaps))
    if missing:
        raise EffarchError(f"the device at {addr} lacks {', '.join(missing)}, which the artifact (built for "
                           f"{target.get('cpu', '?')}) uses; rebuild it with --cpu for that device's core")
    check_sve_length(manifest, cpu.sve_bits, f"the device at {addr}")


# ---- running ----------------------------------------------------------------------------------
def _input_arrays(specs: list[TensorSpec], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The inputs in the model's order, checked with the messages of a local run."""
    check_inputs(specs, inputs)
    return [np.asarray(inputs[s.name], order="C") for s in specs]  # keeps rank 0 (ascontiguousarray does not)


def _remote_device(session: Any, manifest: dict[str, Any]) -> Any:
    return session.cuda(0) if manifest["target"]["name"] == "cuda" else session.cpu(0)


def _run_on(session: Any, art: Artifact, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    name = f"effarch-{art.library_sha256[:16]}{art.library_suffix}"
    session.upload(bytearray(art.library_bytes()), target=name)
    dev = _remote_device(session, art.manifest)
    vm = VirtualMachine(session.load_module(name), dev)
    args = [tvm.runtime.tensor(a, dev) for a in [*arrays, *art.weights()]]
    # Calling vm["main"] over RPC returns a remote object handle; the stateful API fetches tensors.
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    results = vm.get_outputs("main")
    results = results if isinstance(results, list | tuple) else [results]
    return {s.name: r.numpy() for s, r in zip(art.output_specs, results, strict=True)}


def run_remote(artifact_path: str | Path, url: str, inputs: dict[str, np.ndarray],
               timeout_s: float = DEFAULT_TIMEOUT_S, *,
               session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S) -> dict[str, np.ndarray]:
    """Run the artifact once on the device at ``url``; outputs keyed by name, in the model's order.

    ``timeout_s`` bounds each connection step; ``session_timeout_s`` the whole remote session."""
    addr = parse_device(url)
    art = open_artifact(artifact_path)
    try:
        arrays = _input_arrays(art.input_specs, inputs)
        return _run_in_session(addr, art, arrays, timeout_s, session_timeout_s)
    except EffarchError as exc:
        # The traceback's frames hold the session; dropped here, it closes now (see below).
        raise exc.with_traceback(None) from None
    finally:
        art.close()
        # A session closes when its last handle dies, and TVM's VM wrapper keeps reference cycles.
        # The Python RPC server serves one session at a time, so a lingering one blocks the next run.
        gc.collect()


def _run_in_session(addr: DeviceAddress, art: Artifact, arrays: list[np.ndarray], timeout_s: float,
                    session_timeout_s: float) -> dict[str, np.ndarray]:
    t0 = time.perf_counter()
    session = connect(addr, timeout_s, session_timeout_s)
    arch = str(art.manifest["target"].get("arch", ""))
    check_device(art.manifest, device_cpu(session, arch, addr), addr)
    outputs = _run_on(session, art, arrays)
    logger.info("ran %s on %s in %.2f s", art.path.name, addr, time.perf_counter() - t0)
    return outputs
