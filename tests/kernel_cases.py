"""Blocks, runs, comparisons and the cases every kernel must pass against the reference (the
Triton kernels in test_kernels.py, the CPU kernel in test_kernels_cpu.py)."""

from __future__ import annotations

import torch

from langneurons.kernels import reference
from langneurons.kernels.reference import Accumulator
from langneurons.store.schema import DEFAULT_EDGES

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




def check_shape(fn, T, F, dtype):
    """One language, a T x F block of `dtype`: integers equal the reference, sums within TOL."""
    x, lang = block(T, F, dtype, n_languages=1)
    assert_equal_acc(run(fn, x, lang, 1), run(reference.accumulate_, x, lang, 1), dtype)


def check_several_languages_masked_strided_nonfinite(fn, T, dtype):
    x, lang = block(T, 67, dtype, n_languages=3, seed=1, nonfinite=True, strided=True)
    assert x.stride(0) != x.shape[1]
    got = run(fn, x, lang, 3, threshold=0.1)
    want = run(reference.accumulate_, x, lang, 3, threshold=0.1)
    assert_equal_acc(got, want, dtype)
    assert int(want.n_nonfinite.sum()) > 0 and int((lang < 0).sum()) > 0  # both paths really ran
    # every counted token lands in exactly one bin or in n_nonfinite
    tokens = torch.stack([(lang == n).sum() for n in range(3)]) * 2
    per_neuron = got.act_hist[:, 1].sum(-1) + got.n_nonfinite[:, 1]
    assert torch.equal(per_neuron, tokens[:, None].expand_as(per_neuron).to(per_neuron.dtype))


def check_custom_edges_and_negative_threshold(fn, T):
    x, lang = block(T, 33, torch.float32, n_languages=2, seed=2, nonfinite=True)
    edges = (-0.3, 0.7)
    got = run(fn, x, lang, 2, threshold=-0.2, edges=edges)
    want = run(reference.accumulate_, x, lang, 2, threshold=-0.2, edges=edges)
    assert_equal_acc(got, want, torch.float32)


def check_edges(fn, T, n_edges):
    x, lang = block(T, 29, torch.float32, n_languages=2, seed=3, nonfinite=True)
    edges = tuple(torch.linspace(-2.5, 2.5, n_edges).tolist())
    got = run(fn, x, lang, 2, edges=edges)
    want = run(reference.accumulate_, x, lang, 2, edges=edges)
    assert got.act_hist.shape[-1] == n_edges + 1
    assert_equal_acc(got, want, torch.float32)
