"""The numba CPU kernel equals the reference: integer statistics exactly, sums within the float32
tolerance, for odd shapes, every dtype, several languages with masked tokens, strided rows, NaN and
inf, any number of edges; and its float sums do not depend on the thread count."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (DTYPES, assert_equal_acc, block, check_custom_edges_and_negative_threshold, check_edges,
                          check_several_languages_masked_strided_nonfinite, check_shape, run)

from langneurons.kernels import cpu_stats, dispatch, reference
from langneurons.store.schema import NEURON_VARS

pytest.importorskip("numba", reason="numba is not installed: pip install numba")
if torch.cuda.is_available():  # the kernel is the CPU's; blocks are made on the default device
    pytest.skip("the CPU kernel tests build blocks on the CPU", allow_module_level=True)

CHUNK = cpu_stats.CHUNK


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("T,F", [(1, 1), (37, 37), (1023, 131), (64, 1), (CHUNK + 1, 17), (2 * CHUNK, 3)],
                         ids=lambda v: str(v))
def test_cpu_kernel_equals_reference(T, F, dtype):
    check_shape(cpu_stats.accumulate_, T, F, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_several_languages_masked_tokens_strided_and_nonfinite(dtype):
    check_several_languages_masked_strided_nonfinite(cpu_stats.accumulate_, 397, dtype)


def test_many_languages_cost_nothing_when_absent_and_indices_are_checked():
    """Rows are grouped by language before the reduction: a block of 2 of 100 languages is
    reduced into exactly those two (the reference's numbers), and an index past the last
    language is an error, not a silent drop."""
    x, lang = block(3 * CHUNK + 5, 45, torch.float32, n_languages=2, seed=7, nonfinite=True)
    lang = torch.where(lang == 1, 97, lang)  # languages 0 and 97 of 100, tokens interleaved
    got = run(cpu_stats.accumulate_, x, lang, 100)
    want = run(reference.accumulate_, x, lang, 100)
    assert_equal_acc(got, want, torch.float32)
    assert int(got.n_fired[1:97].abs().sum()) == 0 and int(got.act_hist[97].sum()) > 0
    with pytest.raises(ValueError, match="language index >= 2"):
        cpu_stats.reduce_block(x, torch.where(lang == 97, 2, lang), 2, 0.0, torch.tensor([0.0]))


def test_custom_edges_and_negative_threshold():
    check_custom_edges_and_negative_threshold(cpu_stats.accumulate_, 250)


@pytest.mark.parametrize("n_edges", [0, 1, 2, 15, 16, 31, 40], ids=lambda n: f"{n}edges")
def test_any_number_of_edges(n_edges):
    check_edges(cpu_stats.accumulate_, 145, n_edges)


def test_float_sums_do_not_depend_on_the_thread_count():
    """Segments are folded in segment order, so 1 and 2 threads give the same bits (a resumed run
    on another machine shape still sums the same way)."""
    x, lang = block(5 * CHUNK + 3, 211, torch.float32, n_languages=2, seed=4)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(cpu_stats.reduce_block(x, lang, 2, 0.0, torch.tensor([0.0, 1.0])))
    finally:
        torch.set_num_threads(before)
    for v in results[0]:
        assert (results[0][v] == results[1][v]).all(), v


def test_rejects_what_it_cannot_reduce():
    x, lang = block(8, 16, torch.float32, n_languages=1)
    with pytest.raises(ValueError, match=r"\[tokens, d_ff\]"):
        cpu_stats.reduce_block(x[None], lang, 1, 0.0, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="token_lang shape"):
        cpu_stats.reduce_block(x, lang[:-1], 1, 0.0, torch.tensor([0.0]))


def test_dispatch_picks_it_on_the_cpu(monkeypatch):
    monkeypatch.delenv("LANGNEURONS_KERNEL", raising=False)
    assert dispatch.resolve("auto", "cpu") == "numba"
    assert dispatch.get_accumulate("auto", "cpu") is cpu_stats.accumulate_
    assert dispatch.get_accumulate("numba", "cpu") is cpu_stats.accumulate_
    assert dispatch.get_accumulate("reference", "cpu") is reference.accumulate_
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        dispatch.get_accumulate("numba", "cuda")


@pytest.mark.parametrize("fused", [False, True], ids=["hooks", "fused-mlp"])
def test_hf_backend_with_the_cpu_kernel_equals_reference(tmp_path, fused):
    from fixtures import SENTENCES, make_tiny_model

    from langneurons.config import ProfileConfig
    from langneurons.profiler.backends.hf import HFBackend

    path = str(make_tiny_model("llama", tmp_path / "m"))
    sentences = SENTENCES["en"] + SENTENCES["ru"]
    got = HFBackend(ProfileConfig.from_flags(model=path, kernel="numba", batch_tokens=64, fused_mlp=fused)).profile(sentences)
    want = HFBackend(ProfileConfig.from_flags(model=path, kernel="reference", batch_tokens=64)).profile(sentences)
    assert got.n_tokens == want.n_tokens
    for v in NEURON_VARS:
        a, b = torch.from_numpy(getattr(got, v)), torch.from_numpy(getattr(want, v))
        if v.startswith("act_sum"):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        else:
            assert torch.equal(a, b), v
