"""The native (CUDA) build of every Triton kernel, checked on a CPU-only machine.

The interpreter never runs the native code paths (libdevice, compiler options, register layouts),
so CI compiles them ahead of time for sm_80 and sm_90 and reads what they will execute:
- the fused kernel's arithmetic: ATen's silu on CUDA is x / (1 + expf(-x)) with IEEE division and
  no flush-to-zero, and the fused kernel must compile to the same, or its activations would drift
  from the model's own;
- the hot loops' machine code: no shared memory, barriers or spills inside them (each thread keeps
  its neurons' sums in registers), 16-byte loads, and relaxed atomics only at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed: pip install 'langneurons[triton]'")

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
CODE = """
import json, sys
sys.path.insert(0, {tools!r})
from ptx import compile_ptx, loop_profile, summary
out = {f"{k}_{d}_sm{a}": summary(compile_ptx(k, d, a))
       for a in (80, 90) for k in ("stats", "fused") for d in ("fp32", "fp16", "bf16")}
out["loops"] = [loop_profile(k, d, 90) for k in ("stats", "fused") for d in ("fp32", "bf16")]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", CODE.replace("{tools!r}", repr(TOOLS))], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_natively(ptx):
    assert len(ptx) == 13
    for name, s in ptx.items():
        if name == "loops":
            continue
        assert s["atomics"] > 0, name  # partials are flushed with atomics, once per program
        assert s["atomics_ordered"] == 0, f"{name}: the flush needs no memory ordering (relaxed atomics)"
        assert s["vector_loads"] > 0, f"{name}: rows of an aligned block are read with vector loads"


def test_hot_loops_stay_in_registers(ptx):
    """Inside the loop that streams the activations nothing crosses threads or leaves registers:
    a barrier or a shared-memory round trip per tile made the first kernel ~2.5x costlier."""
    assert len(ptx["loops"]) == 4
    for p in ptx["loops"]:
        where = f"{p['kernel']} {p['dtype']}"
        assert p["shared_memory_ops"] == 0 and p["barriers"] == 0, where
        assert p["local_memory_ops"] == 0, f"{where}: registers spilled inside the loop"
        assert p["atomics"] == 0, f"{where}: atomics belong after the loop"
        # the loop body is one iteration of ROWS rows of BLOCK_F values
        assert p["values_per_thread_per_iteration"] >= 32, where


def test_fused_arithmetic(ptx):
    for arch in (80, 90):
        for dtype in ("fp32", "fp16", "bf16"):
            s = ptx[f"fused_{dtype}_sm{arch}"]
            where = f"fused {dtype} sm_{arch}"
            assert s["div_rn"] > 0 and s["div_approx"] == 0, f"{where}: division must be IEEE (div.rn)"
            assert s["ftz_arith"] == 0, f"{where}: flush-to-zero arithmetic (nvcc's default keeps denormals)"
            assert s["expf_constant"] > 0, f"{where}: exp must be libdevice's expf, not a fast ex2-only exp"
            if dtype == "bf16":
                assert s["cvt_rn_bf16"] > 0, where  # silu rounded to nearest even once, as ATen does
            if dtype == "fp16":
                assert s["cvt_rn_f16"] > 0, where
