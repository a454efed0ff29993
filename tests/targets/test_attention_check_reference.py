"""tools/gpu_attention_check.py, which checks the fused attention kernel on the GPU machine: every case it
names is one the fusion takes, and its float64 reference is the graph it builds, compiled for this CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from targets import attention_cases
from targets.attention_fusion import find_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_attention_check as check  # noqa: E402  (tools/ is not a package)


@pytest.mark.parametrize("name", list(check.CASES))
def test_every_case_is_fused(name: str) -> None:
    c = check._case(name)
    (match,) = find_attention(attention_cases.graph(c, check._shapes(c))["main"])
    assert match.plan.blocks > 0


@pytest.mark.parametrize("name", ["cross_48x96_d16_dv48", "keys_48_one_warp", "divided_mask_left", "no_head_merge"])
def test_reference_is_the_graph(name: str) -> None:
    """float16 cases, their products accumulated in float32 as the kernel does; a score rounded the other
    way at a float16 boundary moves the output by at most about one float16 step."""
    index = list(check.CASES).index(name)
    c = check._case(name)
    vals = check.inputs(index, c)
    vm = relax.VirtualMachine(tvm.compile(attention_cases.graph(c, check._shapes(c), wide=True), target="llvm"),
                              tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(vals[k].astype(np.float16)) for k in check._shapes(c)]).numpy()
    ref = check.reference(c, vals)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.1
    assert np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max() < 1e-3


@pytest.mark.parametrize("name", ["minilm_like_b32_bf16", "gpt_like_b8_causal_bf16"])
def test_bfloat16_reference_is_the_graph(name: str) -> None:
    """bfloat16 cases, their inputs sent as the GPU run sends them (bit patterns, the scale a 0-d array)."""
    from gpu_tensorcore_check import _from_bf16_bits, host_array

    index = list(check.CASES).index(name)
    c = check._case(name)
    vals = check.inputs(index, c)
    vm = relax.VirtualMachine(tvm.compile(attention_cases.graph(c, check._shapes(c)), target="llvm"), tvm.cpu())
    args = [tvm.runtime.empty(vals[k].shape, "bfloat16", tvm.cpu()).copyfrom(host_array(vals[k], "bfloat16"))
            for k in check._shapes(c)]
    out = vm["main"](*args)
    got = _from_bf16_bits(out._create_view(out.shape, "uint16").numpy()).astype(np.float64)
    ref = check.reference(c, vals)
    assert np.abs(got - ref).max() / np.abs(ref).max() < check.TOLERANCE["bfloat16"]
