"""tools/cuda_tune.py's parts that run here: the kernels of a zoo model at another batch, and databases
packed side by side under their own names for one device call (``remote --db NAME`` unpacks its own)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import cuda_tune  # noqa: E402  (tools/ is not a package)

from targets.base import get_target  # noqa: E402
from targets.tuning import TuningDatabase  # noqa: E402


def _tune(model: str, db: Path) -> None:
    subprocess.run([sys.executable, "-m", "compiler.cli", "tune", model, "--target", "cuda", "--arch",
                    cuda_tune.ARCH, "--db", str(db)], check=True, capture_output=True, timeout=600)


def test_batch_32_kernels_pack_beside_the_zoo_batch_ones_under_their_own_name(tmp_path: Path) -> None:
    assert cuda_tune.model_source("mlp", None) == "mlp"
    source = cuda_tune.model_source("mlp", 32)
    assert source.endswith("-b32.onnx") and Path(source).is_file()
    _tune("mlp", tmp_path / "b8")
    _tune(source, tmp_path / "b32")
    (tmp_path / "b32" / "logs").mkdir()  # tuning logs stay behind
    packed = {name: cuda_tune.pack_db(tmp_path / name, tmp_path, name) for name in ("b8", "b32")}
    assert {n: p.name for n, p in packed.items()} == {"b8": "b8.tar.xz", "b32": "b32.tar.xz"}
    rows = {}
    for name, path in packed.items():
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert all(n == name or n.startswith(f"{name}/") for n in names) and f"{name}/logs" not in names
            tar.extractall(tmp_path / "unpacked", filter="data")
        kernels = TuningDatabase(tmp_path / "unpacked" / name, get_target("cuda").tvm_target(cuda_tune.ARCH),
                                 "cuda").load_tasks()
        first = next(k for k in kernels if k.name == "effarch_matmul_node_linear")
        rows[name] = int(first.func.params[0].shape[0])  # the activation x: [batch, 784]
    assert rows == {"b8": 8, "b32": 32}  # each pack holds its own batch's kernels
