"""benchmarks/gpu_proof.py, the one command a GPU session runs first, cannot rot: its smoke mode
runs every part (native kernel tests, kernel bandwidth, end to end on both model shapes) on the
CPU, and its set-up refuses clearly when a dependency is missing and no wheels were brought."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_proof.py"


def run(*args, env=None, timeout=420):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_smoke_runs_every_part_and_writes_the_report(tmp_path):
    r = run("--smoke", "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_proof.json").read_text())
    assert res["smoke"] is True and set(res["parts"]) == {"kernel_tests", "kernel_bandwidth", "e2e_llama3-8b",
                                                          "e2e_qwen2-7b"}
    assert all(p["ok"] for p in res["parts"].values()), res["parts"]
    assert "2 passed" in res["parts"]["kernel_tests"]["summary"]
    assert {r["dtype"] for r in res["parts"]["kernel_bandwidth"]["rows"]} == {"bf16", "fp32"}
    for name in ("e2e_llama3-8b", "e2e_qwen2-7b"):
        e = res["parts"][name]
        assert e["triton_counts_equal_reference"] is True and e["counted_tokens"] > 0
        assert e["compiled_counts_equal_eager"] is True and "plain_compiled" in e["tokens_per_s"]
        assert set(e["overhead_vs_plain"]) == {"reference", "triton", "fused", "compiled"}
    assert set(res["targets"]) == {"stats_no_hist_vs_copy", "stats_vs_copy", "e2e_triton_overhead_8b"}
    md = (tmp_path / "gpu_proof.md").read_text()
    assert "| llama3-8b (float32) |" in md and "| 64 | 96 | fp32 |" in md


def test_without_a_gpu_it_says_to_use_smoke(tmp_path):
    r = run("--out-dir", str(tmp_path))
    assert r.returncode == 2 and "no CUDA device here; `--smoke` runs the same code" in r.stdout
    assert not (tmp_path / "gpu_proof.json").exists()


def test_a_missing_dependency_without_wheels_is_one_clear_error(tmp_path):
    code = ("import sys; sys.argv=['gpu_proof']; sys.path.insert(0, 'benchmarks'); import gpu_proof; "
            "gpu_proof.NEEDED = ('zarr', 'no_such_module_xyz'); "
            f"gpu_proof.make_importable(__import__('pathlib').Path({str(tmp_path)!r}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "no_such_module_xyz cannot be imported" in r.stderr and "make gpu-wheels" in r.stderr
