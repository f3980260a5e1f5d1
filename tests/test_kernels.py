"""The Triton kernel equals the reference (integers exactly, sums within a per-dtype tolerance),
run on the CPU under TRITON_INTERPRET=1; on a CUDA machine the same tests run natively."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
triton = pytest.importorskip("triton", reason="triton is not installed: pip install 'langneurons[triton]'")

from kernel_cases import (DEVICE, DTYPES, block, check_custom_edges_and_negative_threshold,  # noqa: E402
                          check_edges, check_several_languages_masked_strided_nonfinite, check_shape)

from langneurons.kernels import dispatch, reference, triton_stats  # noqa: E402
from langneurons.kernels.reference import Accumulator  # noqa: E402
from langneurons.store.schema import DEFAULT_EDGES, NEURON_VARS  # noqa: E402

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("T,F", [(1, 1), (37, 37), (1023, 131), (64, 1)], ids=lambda v: str(v))
def test_kernel_equals_reference(T, F, dtype):
    check_shape(triton_stats.accumulate_, T, F, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_several_languages_masked_tokens_strided_and_nonfinite(dtype):
    check_several_languages_masked_strided_nonfinite(triton_stats.accumulate_, 97, dtype)


def test_custom_edges_and_negative_threshold():
    check_custom_edges_and_negative_threshold(triton_stats.accumulate_, 50)


@pytest.mark.parametrize("n_edges", [0, 1, 16, 31, 40], ids=lambda n: f"{n}edges")
def test_any_number_of_edges(n_edges):
    """15 edges (16 bins) per pass over the block; more take more passes, none gives one bin."""
    check_edges(triton_stats.accumulate_, 45, n_edges)


def test_grid_bounds_every_program():
    """Each program's bin counts live in 16-bit fields: it never covers more than
    MAX_ROWS_PER_PROGRAM tokens, and the programs cover every token exactly once."""
    for T in (1, 7, 8, 63, 4096, 65536, 1_000_003, 40_000_000):
        for F in (1, 511, 1536, 14336):
            cols, splits, per = triton_stats.grid(T, F, torch.device("cpu"))
            assert per % triton_stats.ROWS == 0 and 0 < per <= triton_stats.MAX_ROWS_PER_PROGRAM
            assert (splits - 1) * per < T <= splits * per, (T, F)
            assert cols * triton_stats.BLOCK_F >= F > (cols - 1) * triton_stats.BLOCK_F


def test_rejects_a_mismatched_accumulator():
    x, lang = block(8, 16, torch.float32, n_languages=1)
    acc = Accumulator.zeros(1, 2, 17, DEFAULT_EDGES, 0.0, DEVICE)
    with pytest.raises(ValueError, match="17 neurons"):
        triton_stats.accumulate_(acc, 0, x, lang)


def test_dispatch(monkeypatch):
    monkeypatch.setenv("LANGNEURONS_KERNEL", "reference")
    assert dispatch.get_accumulate("auto", DEVICE) is reference.accumulate_
    monkeypatch.setenv("LANGNEURONS_KERNEL", "triton")
    assert dispatch.get_accumulate("auto", DEVICE) is triton_stats.accumulate_
    monkeypatch.setenv("LANGNEURONS_KERNEL", "auto")
    assert dispatch.resolve("auto", "cpu") == "numba"  # the CPU kernel (tests/test_kernels_cpu.py)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="cannot run on device cpu"):
        dispatch.get_accumulate("triton", "cpu")  # never a silent fallback
    with pytest.raises(ValueError, match="not one of"):
        dispatch.resolve("cuda-magic", "cpu")


def test_hf_backend_with_triton_equals_reference(tmp_path):
    from fixtures import SENTENCES, make_tiny_model

    from langneurons.config import ProfileConfig
    from langneurons.profiler.backends.hf import HFBackend

    path = str(make_tiny_model("llama", tmp_path / "m"))
    sentences = SENTENCES["en"] + SENTENCES["ru"]
    got = HFBackend(ProfileConfig.from_flags(model=path, kernel="triton", batch_tokens=64)).profile(sentences)
    want = HFBackend(ProfileConfig.from_flags(model=path, kernel="reference", batch_tokens=64)).profile(sentences)
    assert got.n_tokens == want.n_tokens
    for v in NEURON_VARS:
        if v.startswith("act_sum"):
            torch.testing.assert_close(torch.from_numpy(getattr(got, v)), torch.from_numpy(getattr(want, v)),
                                       rtol=1e-5, atol=1e-4)
        else:
            assert (getattr(got, v) == getattr(want, v)).all(), v


def test_kernel_benchmark_runs_and_renders(tmp_path, monkeypatch):
    """bench_kernels.py measures only on a GPU; its smoke mode keeps it (and the README table it
    feeds) working between GPU sessions."""
    import json
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import bench_kernels
    import common
    import run_all

    out = tmp_path / "kernels_smoke.json"
    assert bench_kernels.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tokens"], r["d_ff"]) for r in rows] == bench_kernels.SMOKE_SHAPES
    for r in rows:
        assert all(r[k] > 0 for k in ("copy_GBps", "stats_GBps", "stats_no_hist_GBps", "fused_GBps")), r
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert "| 64 | 96 |" in run_all.table()
    assert "bench_kernels" in sys.modules
