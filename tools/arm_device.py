"""The emulated Arm device: TVM's RPC server running under QEMU user mode, on loopback.

    python tools/arm_device.py prepare                      # once: wheels + arm64 Debian root filesystem
    python tools/arm_device.py start [--cpu cortex-a72] [--port 9190] [--tracker HOST:PORT --key KEY]
    python tools/arm_device.py status
    python tools/arm_device.py stop [--port 9190]

``prepare`` fills ``<effarch cache>/arm/`` (``~/.cache/effarch/arm`` by default): an arm64 Debian
root filesystem (``debootstrap --foreign``, its .debs unpacked by hand because the second stage
would need binfmt), and the aarch64 wheels of apache-tvm, apache-tvm-ffi and the RPC server's
Python dependencies, at the host's versions, installed into one ``site`` folder. ``start`` runs
``python3 -m tvm.exec.rpc_server`` with that Python under ``qemu-aarch64-static``, with
``QEMU_CPU=<cpu>`` so the emulated core has exactly that CPU's instructions. Timings are 10-25x
slower than a real core: the device proves correctness, not speed.

The server spawns its workers through ``sys.executable``; without binfmt the kernel cannot exec an
aarch64 binary, so ``sys.executable`` points at a small x86 shell script that re-enters QEMU.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from compiler.errors import EffarchError  # noqa: E402  (needs the path above)
from targets.runtime import default_cache_dir  # noqa: E402

logger = logging.getLogger("arm_device")

QEMU = "qemu-aarch64-static"
SUITE = "bookworm"  # its python3.11 matches the cp311 wheels below
MIRROR = os.environ.get("EFFARCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PYTHON = "usr/bin/python3.11"
# Distributions the RPC server needs on the device; pinned to the host's versions where installed.
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "cloudpickle", "psutil", "tornado",
          "typing_extensions")
INSTALL_HINT = "run tools/install-system-deps.sh or `apt-get install qemu-user-static debootstrap`"

# Runs inside the emulated Python: argv = [boot.py, wrapper, rpc_server args...].
_BOOT = """import runpy, sys
sys.executable = sys.argv[1]
sys.argv = ["tvm.exec.rpc_server"] + sys.argv[2:]
runpy.run_module("tvm.exec.rpc_server", run_name="__main__", alter_sys=True)
"""


def arm_cache() -> Path:
    return default_cache_dir() / "arm"


@dataclass
class DeviceInfo:
    """A started device, as recorded in ``<cache>/run/<port>.json``."""

    pid: int
    cpu: str
    host: str
    port: int
    tracker: str | None
    key: str
    log: str

    @property
    def url(self) -> str:
        if self.tracker:
            return f"tracker://{self.tracker}/{self.key}"
        return f"rpc://{self.host}:{self.port}"


# ---- prepare ----------------------------------------------------------------------------------
def _require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise EffarchError(f"'{name}' is not installed; {INSTALL_HINT}")
    return path


def _pinned(dist: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def _run(cmd: list[str], what: str) -> None:
    logger.info("%s", what)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EffarchError(f"{what} failed ({tail[0]}); check network access and retry")


def _prepare_site(dest: Path, work: Path) -> None:
    platform_args = ["--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version",
                     "3.11", "--implementation", "cp", "--no-deps"]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheels = work / "wheels"
    _run([*pip, "download", *platform_args, "-d", str(wheels), *map(_pinned, WHEELS)],
         "downloading the aarch64 wheels")
    _run([*pip, "install", *platform_args, "--no-index", "--target", str(dest),
          *map(str, sorted(wheels.glob("*.whl")))], "installing the aarch64 wheels")
    # The device runs TVM's runtime only (TVM_USE_RUNTIME_LIB=1); the 240 MB compiler is dead weight.
    (dest / "tvm" / "lib" / "libtvm_compiler.so").unlink(missing_ok=True)


def _prepare_rootfs(dest: Path) -> None:
    if os.geteuid() != 0:
        raise EffarchError("debootstrap needs root to build the arm64 root filesystem; run "
                           "`sudo python tools/arm_device.py prepare` once")
    _run([_require_tool("debootstrap"), "--arch=arm64", "--foreign", "--variant=minbase",
          "--include=python3", SUITE, str(dest), MIRROR], f"debootstrap arm64 {SUITE} from {MIRROR}")
    # The second stage would run arm64 maintainer scripts; unpacking the archives is all Python needs.
    for deb in sorted((dest / "var/cache/apt/archives").glob("*.deb")):
        unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(dest)], stdin=unpack.stdout,
                       check=True, stderr=subprocess.DEVNULL)
        unpack.wait()
        deb.unlink()
    if not (dest / PYTHON).is_file():
        raise EffarchError(f"the arm64 root filesystem has no {PYTHON}; delete {dest} and prepare again")


def _write_launchers(cache: Path) -> None:
    rootfs = cache / "rootfs"
    wrapper = cache / "python-aarch64"
    wrapper.write_text(f'#!/bin/sh\nexec {QEMU} -L "{rootfs}" "{rootfs / PYTHON}" "$@"\n')
    wrapper.chmod(0o755)
    (cache / "boot.py").write_text(_BOOT)


def prepare(cache: Path | None = None) -> Path:
    """Make the device's files once; later calls return at once. Returns the cache folder."""
    cache = cache or arm_cache()
    _require_tool(QEMU)
    stamp = cache / "ready.json"
    wanted = {d: _pinned(d) for d in WHEELS} | {"suite": SUITE}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs preparing at once: the second waits, then reuses
        if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
            _prepare_parts(cache)
            stamp.write_text(json.dumps(wanted))
    return cache


def _prepare_parts(cache: Path) -> None:
    t0 = time.perf_counter()
    for part, make in (("site", _prepare_site), ("rootfs", lambda d, _w: _prepare_rootfs(d))):
        # Built beside the cache and renamed in: an interrupted prepare leaves nothing half-made.
        with tempfile.TemporaryDirectory(prefix=f".{part}.", dir=cache) as work:
            make(Path(work) / part, Path(work))
            shutil.rmtree(cache / part, ignore_errors=True)
            os.replace(Path(work) / part, cache / part)
    _write_launchers(cache)
    logger.info("prepared the emulated Arm device in %.0f s at %s", time.perf_counter() - t0, cache)


# ---- start / stop / status --------------------------------------------------------------------
def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(cache: Path, port: int) -> Path:
    return cache / "run" / f"{port}.json"


def _server_env(cpu: str, cache: Path) -> dict[str, str]:
    env = dict(os.environ, QEMU_CPU=cpu, TVM_USE_RUNTIME_LIB="1", PYTHONPATH=str(cache / "site"))
    env.pop("PYTHONHOME", None)
    return env


def start(cpu: str = "cortex-a72", port: int = 9190, host: str = "127.0.0.1", tracker: str | None = None,
          key: str = "", ready_timeout_s: float = 120.0, cache: Path | None = None) -> DeviceInfo:
    """Start the device in the background and wait until it serves; returns its record."""
    cache = prepare(cache)
    if _port_open(host, port):
        raise EffarchError(f"port {host}:{port} is already in use; stop that server or pass --port")
    log = cache / "run" / f"{port}.log"
    log.parent.mkdir(exist_ok=True)
    args = [QEMU, "-L", str(cache / "rootfs"), str(cache / "rootfs" / PYTHON), str(cache / "boot.py"),
            str(cache / "python-aarch64"), "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    if tracker:
        args += ["--tracker", tracker, "--key", key or "arm", "--custom-addr", host]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=_server_env(cpu, cache), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    info = DeviceInfo(proc.pid, cpu, host, port, tracker, key or ("arm" if tracker else ""), str(log))
    _record(cache, port).write_text(json.dumps(asdict(info)))
    _wait_ready(info, proc, ready_timeout_s)
    logger.info("emulated %s serving at %s (pid %d, log %s)", cpu, info.url, proc.pid, log)
    return info


def _wait_ready(info: DeviceInfo, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(info.log).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise EffarchError(f"the emulated device exited with code {proc.returncode} ({tail[0]}); "
                               f"see {info.log}")
        if _port_open(info.host, info.port):
            return
        time.sleep(0.25)
    _kill_group(info.pid)
    raise EffarchError(f"the emulated device did not listen on {info.host}:{info.port} within "
                       f"{timeout_s:.0f} s; see {info.log}")


def _kill_group(pid: int) -> None:
    # The server, its QEMU wrapper and its forked workers share the session started for ``pid``.
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(40):
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def devices(cache: Path | None = None) -> list[DeviceInfo]:
    """Recorded devices whose process still runs (stale records are removed)."""
    found = []
    for rec in sorted(((cache or arm_cache()) / "run").glob("*.json")):
        info = DeviceInfo(**json.loads(rec.read_text()))
        if _alive(info.pid):
            found.append(info)
        else:
            rec.unlink()
    return found


def stop(port: int | None = None, cache: Path | None = None) -> list[DeviceInfo]:
    """Stop the device on ``port`` (every recorded device if None); returns those stopped."""
    cache = cache or arm_cache()
    stopped = [d for d in devices(cache) if port is None or d.port == port]
    for info in stopped:
        _kill_group(info.pid)
        _record(cache, info.port).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="download and unpack the device's files (once)")
    start_p = sub.add_parser("start", help="start the emulated device in the background")
    start_p.add_argument("--cpu", default="cortex-a72", help="QEMU CPU model (default cortex-a72)")
    start_p.add_argument("--port", type=int, default=9190)
    start_p.add_argument("--host", default="127.0.0.1")
    start_p.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker to register with")
    start_p.add_argument("--key", default="", help="device key at the tracker (default 'arm')")
    stop_p = sub.add_parser("stop", help="stop a started device (all of them without --port)")
    stop_p.add_argument("--port", type=int)
    sub.add_parser("status", help="list running devices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "prepare":
            print(prepare())
        elif args.command == "start":
            print(start(args.cpu, args.port, args.host, args.tracker, args.key).url)
        elif args.command == "stop":
            print("\n".join(f"stopped {d.url} ({d.cpu})" for d in stop(args.port)) or "no device running")
        else:
            print("\n".join(f"{d.url}  cpu={d.cpu}  pid={d.pid}  log={d.log}" for d in devices())
                  or "no device running")
    except EffarchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
