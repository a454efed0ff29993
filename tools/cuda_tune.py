"""Tune CUDA kernels on the GPU machine and ship the winners with effarch (issue 9, point 3).

The GPU machine has no TVM and takes 64 MiB per call; TVM's compiler library alone is 259 MB. So:

    python tools/cuda_tune.py pack --db out/cudadb resnet18 gpt ...   # here: kernels + the full TVM, compressed
    python tools/cuda_tune.py pack --db out/cudadb32 --batch 32 --name b32 resnet18 gpt ...   # optional, beside it
    [device call, carry .tvmfull]
    python3 tools/cuda_tune.py remote --trials 160 --time-budget 4m --out $OUT/b1
    python3 tools/cuda_tune.py remote --db b32 --trials 160 --time-budget 4m --out $OUT/b32
    python tools/cuda_tune.py ship --from DIR/b1 [--replace]; python tools/cuda_tune.py ship --from DIR/b32

``pack`` lowers each model (``effarch tune MODEL --target cuda --arch sm_90``: no GPU here, so the
kernels are saved, not measured) and writes ``.tvmfull``: the TVM package of this venv with its
compiler library (xz with the x86 filter: 55 MiB), the files of tvm-ffi's cp312 wheel and the database.
``remote`` unpacks them into /tmp, runs ``effarch tune --db ... --target cuda --arch sm_90`` there
(MetaSchedule, measured on the H200 beside our own schedules) and writes the database to ``--out``. The GPU
machine has no xgboost, so MetaSchedule's cost model there is its random one, unless a first call to the same
warm machine installs ``xgboost-cpu`` (5.6 MB; ``pip install --no-index --no-deps --target /tmp/xgbsite``) and
``remote`` runs with ``PYTHONPATH=/tmp/xgbsite``: a given PYTHONPATH is kept after TVM's.
``ship`` keeps the index and the winning records (``TuningDatabase.export_winners``) in
``targets/tuning/bundled``, which every ``effarch compile --target cuda --arch sm_90`` applies.
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / ".tvmfull"
ARCH = "sm_90"
XZ_X86 = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 28}]


def _tvm_dirs() -> tuple[Path, str]:
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("tvm")  # located, not imported: only targets/ imports tvm
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("TVM is not installed in this Python; run 'make setup' first")
    return Path(spec.submodule_search_locations[0]), importlib.metadata.version("apache-tvm-ffi")


def pack_tvm(dest: Path) -> None:
    """``dest``: libtvm_compiler.so.xz, site.tar.xz (the rest of the package) and tvm_ffi.tar.xz (the files
    of tvm-ffi's cp312 wheel); kept between runs (the compiler library takes 7 minutes to compress)."""
    tvm_dir, ffi = _tvm_dirs()
    dest.mkdir(exist_ok=True)
    lib = dest / "libtvm_compiler.so.xz"
    if not lib.exists():
        print("compressing libtvm_compiler.so (about 7 minutes)", file=sys.stderr)
        data = (tvm_dir / "lib" / "libtvm_compiler.so").read_bytes()
        lib.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ, filters=XZ_X86))
    site = dest / "site.tar.xz"
    if not site.exists():
        skip = {"libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__"}
        with tarfile.open(site, "w:xz", preset=9) as tar:
            tar.add(tvm_dir, arcname="tvm", filter=lambda t: None if Path(t.name).name in skip else t)
    ffi_pack = dest / "tvm_ffi.tar.xz"
    if not ffi_pack.exists():  # the cp312 wheel unpacked, re-compressed like the compiler: 3.1 -> 1.9 MiB
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.12", "--implementation", "cp", "--platform",
                            "manylinux_2_28_x86_64", "-d", tmp, f"apache-tvm-ffi=={ffi}"], check=True)
            wheel = next(Path(tmp).glob("apache_tvm_ffi-*.whl"))
            buf = io.BytesIO()
            with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=buf, mode="w") as tar:
                for item in whl.infolist():
                    if item.is_dir():
                        continue
                    info = tarfile.TarInfo(item.filename)
                    info.size, info.mode = item.file_size, (item.external_attr >> 16) or 0o644
                    tar.addfile(info, io.BytesIO(whl.read(item)))
            ffi_pack.write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=XZ_X86))
    for stale in dest.glob("apache_tvm_ffi-*.whl"):  # packs made before the wheel was re-compressed
        stale.unlink()


def pack_db(db: Path, dest: Path, name: str = "db") -> Path:
    """The database's target folder, tasks included, as ``dest/NAME.tar.xz`` (JSON compresses ~10x)."""
    path = dest / f"{name}.tar.xz"
    with tarfile.open(path, "w:xz", preset=9) as tar:
        tar.add(db, arcname=name, filter=lambda t: None if Path(t.name).name == "logs" else t)
    return path


def model_source(model: str, batch: int | None) -> str:
    """What ``effarch tune`` takes for ``model`` at ``batch`` rows: the model itself at its own batch, else the
    zoo model exported at that batch (as tools/gpu_check.py builds it; zoo names only)."""
    if batch is None:
        return model
    if str(ROOT / "tools") not in sys.path:  # once, however many models are packed
        sys.path.insert(0, str(ROOT / "tools"))
    from gpu_models import batched_source  # torch and the zoo: imported only when a batch is asked for

    return batched_source(model, batch)


def cmd_pack(args: argparse.Namespace) -> int:
    for model in args.models:
        subprocess.run([str(Path(sys.executable).parent / "effarch"), "tune", model_source(model, args.batch),
                        "--target", "cuda", "--arch", ARCH, "--db", str(args.db), "--precision", args.precision],
                       check=True)
    pack_tvm(PACK)
    print(f"{pack_db(args.db, PACK, args.name)}: the kernels ('remote --db {args.name}' tunes them)")
    size = sum(p.stat().st_size for p in PACK.iterdir()) / 2**20
    print(f"{PACK}: {size:.1f} MiB (carry it; the tracked tree travels beside it, 64 MiB in all)")
    return 0


def cmd_remote(args: argparse.Namespace) -> int:
    """On the GPU machine: unpack, tune, write the database under ``--out``."""
    top = Path("/tmp/tvmfull")
    site = top / "site"
    if not (site / "tvm" / "lib" / "libtvm_compiler.so").exists():
        site.mkdir(parents=True, exist_ok=True)
        with tarfile.open(PACK / "site.tar.xz") as tar:
            tar.extractall(site, filter="data")
        with lzma.open(PACK / "libtvm_compiler.so.xz") as src, open(site / "tvm/lib/libtvm_compiler.so", "wb") as out:
            shutil.copyfileobj(src, out, 1 << 24)
        with tarfile.open(PACK / "tvm_ffi.tar.xz") as tar:  # the wheel's files, as pip would place them
            tar.extractall(site, filter="data")
    db = top / args.db
    if not db.exists():
        with tarfile.open(PACK / f"{args.db}.tar.xz") as tar:
            tar.extractall(top, filter="data")
    given = os.environ.get("PYTHONPATH")  # kept after ours: e.g. a carried xgboost (a learned cost model)
    env = {**os.environ, "PYTHONPATH": ":".join([str(site), str(ROOT)] + ([given] if given else [])),
           "PYTHONUNBUFFERED": "1"}
    env.pop("TVM_USE_RUNTIME_LIB", None)
    if shutil.which("nvcc"):  # candidates compiled by nvcc (TVM's default, NVRTC, needs cuda-python's version to match)
        env["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    argv = [sys.executable, "-m", "compiler.cli", "tune", "--db", str(db), "--target", "cuda", "--arch", ARCH,
            "--trials", str(args.trials), "--chunk", str(args.chunk)]
    if args.time_budget:
        argv += ["--time-budget", args.time_budget]
    rc = subprocess.run(argv, env=env, cwd=ROOT).returncode
    out = Path(args.out)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        tar.add(db, arcname="db", filter=lambda t: None if Path(t.name).name in ("logs", "tasks.json") else t)
    (out / "cudadb.tar.xz").write_bytes(buf.getvalue())
    return rc


def cmd_ship(args: argparse.Namespace) -> int:
    """Unpack what ``remote`` wrote and keep its winners in ``targets/tuning/bundled``."""
    from targets.base import get_target
    from targets.cuda import BUNDLED_TUNING
    from targets.tuning import TuningDatabase

    work = Path(args.work)
    with tarfile.open(Path(args.source) / "cudadb.tar.xz") as tar:
        tar.extractall(work, filter="data")
    spec = get_target("cuda")
    db = TuningDatabase(work / "db", spec.tvm_target(ARCH), "cuda")
    if args.replace:
        shutil.rmtree(BUNDLED_TUNING / db.folder.name, ignore_errors=True)
    kept = db.export_winners(BUNDLED_TUNING)
    wins = sum(e.tuned_wins for e in db.entries.values())
    print(f"{BUNDLED_TUNING / db.folder.name}: {len(db.entries)} kernels measured, tuning won {wins}, "
          f"{kept} records shipped")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="save the models' CUDA kernels and pack the full TVM into .tvmfull")
    a.add_argument("models", nargs="+", help="zoo names or ONNX files (as given to effarch tune)")
    a.add_argument("--db", type=Path, default=ROOT / "out" / "cudadb")
    a.add_argument("--precision", default="fp32")
    a.add_argument("--batch", type=int, help="zoo models at this batch (exported as tools/gpu_check.py builds "
                   "them), not the zoo's own")
    a.add_argument("--name", default="db", help="the database's name in .tvmfull (NAME.tar.xz): packs of other "
                   "batches travel beside it, each tuned by its own 'remote --db NAME'")
    a.set_defaults(func=cmd_pack)
    r = sub.add_parser("remote", help="on the GPU machine: tune the packed kernels")
    r.add_argument("--trials", type=int, default=160)
    r.add_argument("--chunk", type=int, default=16)
    r.add_argument("--time-budget", default="6m")
    r.add_argument("--out", required=True)
    r.add_argument("--db", default="db", help="which packed database (pack --name); one --out folder for each")
    r.set_defaults(func=cmd_remote)
    s = sub.add_parser("ship", help="keep the winners of a remote tune in targets/tuning/bundled")
    s.add_argument("--from", dest="source", required=True, help="the folder holding cudadb.tar.xz")
    s.add_argument("--work", default=str(ROOT / "out" / "cudadb-back"))
    s.add_argument("--replace", action="store_true", help="drop the shipped records first (else merge: "
                   "another tune's kernels stay)")
    s.set_defaults(func=cmd_ship)
    args = p.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
