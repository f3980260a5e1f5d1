"""The Triton kernel equals the reference (integers exactly, sums within a per-dtype tolerance),
run on the CPU under TRITON_INTERPRET=1; on a CUDA machine the same tests run natively."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
triton = pytest.importorskip("triton", reason="triton is not installed: pip install 'langneurons[triton]'")

from langneurons.kernels import dispatch, reference, triton_stats  # noqa: E402
from langneurons.kernels.reference import Accumulator  # noqa: E402
from langneurons.store.schema import DEFAULT_EDGES, NEURON_VARS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def block(T, F, dtype, n_languages, seed=0, nonfinite=False, strided=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, F + (5 if strided else 0), generator=g) * 1.5
    x[::3, ::2] = 0.5  # values exactly on an edge and on a tie with bf16 rounding
    lang = torch.randint(-1, n_languages, (T,), generator=g, dtype=torch.int32)
    if nonfinite:  # in counted rows, and in one masked row (which must not count)
        rows = torch.nonzero(lang >= 0).squeeze(1)
        for i, v in enumerate((float("nan"), float("inf"), float("-inf"))):
            x[rows[i % len(rows)], 2 + i % F] = v
        x[torch.nonzero(lang < 0).squeeze(1)[:1], 3] = float("nan")
    x = x.to(dtype).to(DEVICE)
    if strided:
        x = x[:, 2:F + 2]  # row stride F+5: what a slice of a wider activation gives
    return x, lang.to(DEVICE)


def run(fn, x, lang, n_languages, threshold=0.0, layer=1, edges=DEFAULT_EDGES):
    acc = Accumulator.zeros(n_languages, 3, x.shape[1], edges, threshold, DEVICE)
    fn(acc, layer, x, lang)
    fn(acc, layer, x, lang)  # accumulates, does not overwrite
    return acc


def assert_equal_acc(a, b, dtype):
    for v in ("n_fired", "act_hist", "n_nonfinite"):
        torch.testing.assert_close(a.__getattribute__(v), b.__getattribute__(v), rtol=0, atol=0, msg=v)
    for v in ("act_sum", "act_sumsq"):
        torch.testing.assert_close(getattr(a, v), getattr(b, v), rtol=TOL[dtype], atol=TOL[dtype] * 10, msg=v)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("T,F", [(1, 1), (37, 37), (1023, 131), (64, 1)], ids=lambda v: str(v))
def test_kernel_equals_reference(T, F, dtype):
    x, lang = block(T, F, dtype, n_languages=1)
    assert_equal_acc(run(triton_stats.accumulate_, x, lang, 1), run(reference.accumulate_, x, lang, 1), dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_several_languages_masked_tokens_strided_and_nonfinite(dtype):
    x, lang = block(97, 67, dtype, n_languages=3, seed=1, nonfinite=True, strided=True)
    assert x.stride(0) != x.shape[1]
    got = run(triton_stats.accumulate_, x, lang, 3, threshold=0.1)
    want = run(reference.accumulate_, x, lang, 3, threshold=0.1)
    assert_equal_acc(got, want, dtype)
    assert int(want.n_nonfinite.sum()) > 0  # the non-finite path really ran
    # every counted token lands in exactly one bin or in n_nonfinite
    tokens = torch.stack([(lang == n).sum() for n in range(3)]) * 2
    per_neuron = got.act_hist[:, 1].sum(-1) + got.n_nonfinite[:, 1]
    assert torch.equal(per_neuron, tokens[:, None].expand_as(per_neuron).to(per_neuron.dtype))


def test_custom_edges_and_negative_threshold():
    x, lang = block(50, 33, torch.float32, n_languages=2, seed=2, nonfinite=True)
    edges = (-0.3, 0.7)
    got = run(triton_stats.accumulate_, x, lang, 2, threshold=-0.2, edges=edges)
    want = run(reference.accumulate_, x, lang, 2, threshold=-0.2, edges=edges)
    assert_equal_acc(got, want, torch.float32)


@pytest.mark.parametrize("n_edges", [0, 1, 16, 31, 40], ids=lambda n: f"{n}edges")
def test_any_number_of_edges(n_edges):
    """15 edges (16 bins) per pass over the block; more take more passes, none gives one bin."""
    x, lang = block(45, 29, torch.float32, n_languages=2, seed=3, nonfinite=True)
    edges = tuple(torch.linspace(-2.5, 2.5, n_edges).tolist())
    got = run(triton_stats.accumulate_, x, lang, 2, edges=edges)
    want = run(reference.accumulate_, x, lang, 2, edges=edges)
    assert got.act_hist.shape[-1] == n_edges + 1
    assert_equal_acc(got, want, torch.float32)


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
    assert dispatch.resolve("auto", "cpu") == "reference"
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
    got = HFBackend(ProfileConfig(model=path, kernel="triton", batch_tokens=64)).profile(sentences)
    want = HFBackend(ProfileConfig(model=path, kernel="reference", batch_tokens=64)).profile(sentences)
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
    import run_all

    out = tmp_path / "kernels_smoke.json"
    assert bench_kernels.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tokens"], r["d_ff"]) for r in rows] == bench_kernels.SMOKE_SHAPES
    for r in rows:
        assert all(r[k] > 0 for k in ("copy_GBps", "stats_GBps", "stats_no_hist_GBps", "fused_GBps")), r
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    assert "| 64 | 96 |" in run_all.table()
    assert "bench_kernels" in sys.modules
