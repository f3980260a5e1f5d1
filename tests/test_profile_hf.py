"""The HF backend's statistics equal a straightforward, independent computation, for every
supported architecture and both sites, with padding and special tokens handled as documented."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import SENTENCES, make_tiny_model
from transformers import AutoTokenizer

from langneurons.config import ProfileConfig
from oracle import reference_stats_numpy, sequence_activations
from langneurons.profiler import architectures
from langneurons.profiler.backends.hf import HFBackend

ARCHS = sorted(k for k, v in architectures.ARCHITECTURES.items() if v.moe is None)  # MoE: tests/test_moe.py


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: make_tiny_model(a, root / a) for a in ARCHS}


def oracle_activations(path, sentences, site, include_special):
    """Per layer, [tokens, d_ff] activations of the counted tokens, one sentence at a time (no
    padding), recomputed from each MLP's input with the architecture's own formula."""
    tok = AutoTokenizer.from_pretrained(path)
    seqs = []
    for s in sentences:
        enc = tok(s, return_special_tokens_mask=True)
        keep = [include_special or not m for m in enc["special_tokens_mask"]]
        seqs.append((enc["input_ids"], keep))
    return sequence_activations(path, seqs, site)


@pytest.mark.parametrize("site", ["gate", "down_in"])
@pytest.mark.parametrize("arch", ARCHS)
def test_stats_equal_independent_computation(models, arch, site):
    sentences = SENTENCES["en"] + SENTENCES["ru"]
    cfg = ProfileConfig.from_flags(model=str(models[arch]), site=site, threshold=0.0, batch_tokens=64)
    stats = HFBackend(cfg).profile(sentences)
    n_tok, acts = oracle_activations(models[arch], sentences, site, include_special=False)
    want = reference_stats_numpy(acts, 0.0, cfg.counting.bin_edges)

    assert stats.n_tokens == n_tok
    np.testing.assert_array_equal(stats.n_fired, want["n_fired"])
    np.testing.assert_array_equal(stats.act_hist, want["act_hist"])
    np.testing.assert_array_equal(stats.n_nonfinite, want["n_nonfinite"])
    np.testing.assert_allclose(stats.act_sum, want["act_sum"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats.act_sumsq, want["act_sumsq"], rtol=1e-4, atol=1e-3)
    # the model really fires and spreads over bins: the comparison is not vacuous
    assert 0 < stats.n_fired.sum() < stats.n_tokens * stats.n_fired.size
    assert (stats.act_hist.sum(axis=(0, 1)) > 0).sum() >= 4


def test_special_tokens_excluded_by_default_and_counted_on_request(tmp_path):
    path = make_tiny_model("llama", tmp_path / "m", add_eos=True)  # tokenizer adds BOS and EOS
    sentences = SENTENCES["fr"]
    tok = AutoTokenizer.from_pretrained(path)
    text_tokens = sum(len(tok(s, add_special_tokens=False).input_ids) for s in sentences)

    default = HFBackend(ProfileConfig.from_flags(model=str(path))).profile(sentences)
    with_special = HFBackend(ProfileConfig.from_flags(model=str(path), include_special_tokens=True)).profile(sentences)
    assert default.n_tokens == text_tokens
    assert with_special.n_tokens == text_tokens + 2 * len(sentences)
    n_all, acts = oracle_activations(path, sentences, "gate", include_special=True)
    assert with_special.n_tokens == n_all
    np.testing.assert_array_equal(with_special.n_fired, reference_stats_numpy(acts, 0.0, [0.0])["n_fired"])


def test_padding_never_counts(models):
    """One big padded batch and one sentence per batch give the same integer statistics."""
    sentences = SENTENCES["en"] + SENTENCES["fr"]
    path = str(models["llama"])
    batched = HFBackend(ProfileConfig.from_flags(model=path, batch_tokens=4096)).profile(sentences)
    single = HFBackend(ProfileConfig.from_flags(model=path, batch_tokens=1)).profile(sentences)
    assert batched.n_tokens == single.n_tokens
    np.testing.assert_array_equal(batched.n_fired, single.n_fired)
    np.testing.assert_array_equal(batched.act_hist, single.act_hist)


def test_stats_returned_are_not_overwritten_by_the_next_profile(models):
    """The backend reuses its accumulators: the Stats it returned must be copies (on the CPU a
    tensor's numpy() is a view, which the next shard's zeroing used to overwrite)."""
    backend = HFBackend(ProfileConfig.from_flags(model=str(models["llama"])))
    first = backend.profile(SENTENCES["en"])
    kept = first.copy()
    backend.profile(SENTENCES["fr"][:1])
    assert first.equal(kept) and first.n_fired.sum() > 0


def test_threshold_is_strict_and_configurable(models):
    sentences = SENTENCES["en"]
    path = str(models["qwen2"])
    low = HFBackend(ProfileConfig.from_flags(model=path, threshold=0.0)).profile(sentences)
    high = HFBackend(ProfileConfig.from_flags(model=path, threshold=0.5)).profile(sentences)
    assert (high.n_fired <= low.n_fired).all() and high.n_fired.sum() < low.n_fired.sum()
    # n_fired at threshold 0.5 = tokens in bins above the 0.5 edge (0.5 is a default edge)
    edges = np.asarray(ProfileConfig.from_flags().counting.bin_edges)
    above = np.flatnonzero(edges >= 0.5)[0] + 1
    np.testing.assert_array_equal(high.n_fired, low.act_hist[..., above:].sum(-1))


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, d_ff=16, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as e:
        architectures.arch_spec("t5")
    assert "llama" in str(e.value) and "xglm" in str(e.value)


@pytest.mark.parametrize("arch,site,kernel", [("llama", "gate", "numba"), ("qwen2", "down_in", "numba"),
                                              ("gemma3_text", "gate", "reference"), ("phi3", "gate", "numba"),
                                              ("cohere", "down_in", "reference")])
def test_compile_counts_what_eager_counts(models, arch, site, kernel):
    """--compile: the base model under torch.compile, its hooks traced into the graph, reducing
    through langneurons' custom op. Integer statistics equal the eager backend's exactly, sums to
    float order, over several batch shapes (one graph, dynamic shapes) and two profile calls (the
    hooks are installed once and keep counting)."""
    sentences = SENTENCES["en"] + SENTENCES["ru"] + SENTENCES["fr"]
    stats = {}
    for compiled in (True, False):
        c = ProfileConfig.from_flags(model=str(models[arch]), batch_tokens=64, max_length=128, site=site, kernel=kernel,
                                     compile=compiled)
        backend = HFBackend(c)
        assert backend.plan.record()["compiled"] is compiled
        try:
            first = backend.profile(sentences[:4])
            stats[compiled] = backend.profile(sentences)
        finally:
            backend.close()
        assert first.n_tokens < stats[compiled].n_tokens  # each call counts its own sentences only
    got, want = stats[True], stats[False]
    assert got.n_tokens == want.n_tokens
    for v in ("n_fired", "act_hist", "n_nonfinite"):
        np.testing.assert_array_equal(getattr(got, v), getattr(want, v), err_msg=v)
    assert want.n_fired.sum() > 0
    for v in ("act_sum", "act_sumsq"):
        np.testing.assert_allclose(getattr(got, v), getattr(want, v), rtol=1e-4, atol=1e-4, err_msg=v)
